import ArgumentParser

/// Commands whose work this version of caid does not do yet. Each says so plainly and exits 69 (EX_UNAVAILABLE),
/// rather than pretending.
enum NotBuilt {
    static func refuse(_ command: String, _ what: String) -> ExitCode {
        printError("caid \(command): \(what) is not built in this version of caid yet; nothing was done.")
        return ExitCode(69)
    }

    struct Tunnel: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "tunnel", abstract: "Run the client side of the attested gateway (not built yet).")
        func run() throws { throw refuse("tunnel", "the attested tunnel client") }
    }
}
