import ArgumentParser
import CaidBase
import CaidCore
import CaidSystemd

/// `caid`: the Confidential AI host daemon and its tools.
@main
struct Caid: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "caid",
        abstract: "Confidential AI daemon: attestation, model key, model download, decrypted mount and attested gateway.",
        discussion: """
            caid replaces the CAI docker-compose stack with one systemd service that reads the same cai.env.
            Exit status: 0 success, 1 failure, 2 unreachable (health), 78 configuration error.
            """,
        version: CaidVersion.current,
        subcommands: [
            RunCommand.self, CheckConfigCommand.self, HealthCommand.self,
            EncryptCommand.self, ManifestCommand.self, MountCommand.self,
            FetchCommand.self, AttestCommand.self, GetResourceCommand.self, GatewayCommand.self, TunnelCommand.self,
        ]
    )

    /// Core dumps are turned off before anything else runs (before cai.env, a password or a key is read), for every
    /// command: a trap must not write secrets to disk. The descriptor limit goes up to what the unit allows.
    static func main() async {
        ProcessHardening.disableCoreDumps()
        DescriptorLimit.raiseToHard()
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}

/// The `--env` option every command that reads cai.env shares.
struct EnvOption: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The cai.env file.", valueName: "path"))
    var env: String = "/etc/caid/cai.env"
}
