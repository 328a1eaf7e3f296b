import ArgumentParser

/// Commands whose work this version of caid does not do yet. Each says so plainly and exits 69 (EX_UNAVAILABLE),
/// rather than pretending.
enum NotBuilt {
    static func refuse(_ command: String, _ what: String) -> ExitCode {
        printError("caid \(command): \(what) is not built in this version of caid yet; nothing was done.")
        return ExitCode(69)
    }

    struct Attest: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "attest", abstract: "Prove this TEE to Trustee and print the token's claims (not built yet).")
        @OptionGroup var env: EnvOption
        func run() throws { throw refuse("attest", "attestation to Trustee") }
    }

    struct GetResource: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "get-resource", abstract: "Fetch a kbs:/// resource from Trustee (not built yet).")
        @Argument(help: "The resource, kbs:///<repository>/<type>/<tag>.") var uri: String
        @OptionGroup var env: EnvOption
        func run() throws { throw refuse("get-resource", "the key broker client") }
    }

    struct Tunnel: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "tunnel", abstract: "Run the client side of the attested gateway (not built yet).")
        func run() throws { throw refuse("tunnel", "the attested tunnel client") }
    }
}
