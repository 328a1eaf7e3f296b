import ArgumentParser

#if canImport(Glibc)
import CaidConfiguration
import Glibc
#endif

/// Writes a line to standard error.
func printError(_ text: String) {
    var bytes = Array((text + "\n").utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}

/// Writes a line to standard output at once (not buffered), for lines other programs wait for.
func printOut(_ text: String) {
    var bytes = Array((text + "\n").utf8)
    _ = bytes.withUnsafeMutableBytes { write(1, $0.baseAddress, $0.count) }
}

extension EnvOption {
    /// Loads and validates the configuration, printing every diagnostic to stderr.
    /// - Throws: `ExitCode(78)` when the configuration cannot be used.
    func load() throws -> CaidConfig {
        do {
            let (config, warnings) = try CaidConfig.load(path: env)
            for warning in warnings { printError(warning.description) }
            return config
        } catch {
            for diagnostic in error.diagnostics { printError(diagnostic.description) }
            let errors = error.diagnostics.filter { $0.severity == .error }.count
            printError("\(env): \(errors) error\(errors == 1 ? "" : "s"); caid did not start")
            throw ExitCode(ConfigError.exitCode)
        }
    }
}

struct CheckConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate cai.env and print the effective configuration, secrets redacted.",
        discussion: """
            Exits 0 when caid can start with it and 78 otherwise; every problem names file, line and key. It makes \
            the same checks as `caid run` (the TEE CAID_ATTESTER asks for, certificate files, the OSS endpoint), so \
            it refuses exactly what `run` refuses.
            """
    )

    @OptionGroup var env: EnvOption

    func run() throws {
        let (config, _) = try env.loadForRun()
        print("# effective configuration from \(config.file)")
        for (key, value) in config.redactedSummary { print("\(key)=\(value)") }
    }
}
