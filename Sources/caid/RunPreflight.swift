import ArgumentParser
import Attestation
#if canImport(Glibc)
import CaidConfiguration
import Glibc
#endif
import NIOSSL
import ObjectStore
import OSSProtocol
import RATLS

/// Everything `caid run` checks before it starts a service, beyond what `CaidConfig.load` checks: that the TEE
/// `CAID_ATTESTER` asks for is there, that `CAID_TRUSTEE_CA` and `CAID_TOKEN_CERTS` hold certificates, and that
/// `MODEL_OSS_ENDPOINT` makes an OSS address. `caid check-config` runs the same checks, so it refuses exactly what
/// `run` refuses; and since `run` refuses with 78 as the unit's main process, `RestartPreventExitStatus=78` applies
/// (it does not to an `ExecStartPre=`).
struct RunPreflight {
    let provider: EvidenceProvider
    /// The CA certificates Trustee's TLS certificate must chain to; nil for the system's.
    let trusteeRoots: [NIOSSLCertificate]?
    let tokenTrust: TokenTrust?
    let ossEndpoint: Endpoint
    /// The group `CAID_HEALTH_GROUP` names, nil when it is not set.
    let healthGroup: gid_t?

    /// - Throws: every problem found, not only the first, worded as `FILE: KEY: message`.
    static func check(_ config: CaidConfig) throws(ConfigError) -> RunPreflight {
        var diagnostics: [ConfigDiagnostic] = []
        var provider: EvidenceProvider?
        do {
            provider = try KeyBrokerSetup.provider(for: config)
        } catch {
            diagnostics.append(ConfigDiagnostic(.error, file: config.file, key: "CAID_ATTESTER", message: error.description))
        }
        var roots: [NIOSSLCertificate]?
        do {
            roots = try KeyBrokerSetup.trusteeRoots(for: config)
        } catch {
            diagnostics += error.diagnostics
        }
        var tokenTrust: TokenTrust?
        do {
            tokenTrust = try KeyBrokerSetup.tokenTrust(for: config)
        } catch {
            diagnostics += error.diagnostics
        }
        var endpoint: Endpoint?
        do {
            endpoint = try ObjectStoreSetup.endpoint(for: config)
        } catch {
            diagnostics.append(ConfigDiagnostic(.error, file: config.file, key: "MODEL_OSS_ENDPOINT", message: error.description))
        }
        var healthGroup: gid_t?
        if let name = config.healthGroup {
            healthGroup = Self.groupID(name)
            if healthGroup == nil {
                diagnostics.append(ConfigDiagnostic(.error, file: config.file, key: "CAID_HEALTH_GROUP", message: "no group '\(name)' on this host (getent group \(name)); create it or give a GID"))
            }
        }
        guard diagnostics.isEmpty, let provider, let endpoint else { throw ConfigError(diagnostics: diagnostics) }
        return RunPreflight(provider: provider, trusteeRoots: roots, tokenTrust: tokenTrust, ossEndpoint: endpoint, healthGroup: healthGroup)
    }

    /// A GID as a number, or the GID of a group name in the group database.
    static func groupID(_ name: String) -> gid_t? {
        if let number = gid_t(name) { return number }
        var group = Glibc.group()
        var result: UnsafeMutablePointer<Glibc.group>?
        var buffer = [CChar](repeating: 0, count: 16384)
        guard getgrnam_r(name, &group, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
        return group.gr_gid
    }
}

extension EnvOption {
    /// Loads the configuration and runs ``RunPreflight``, printing every diagnostic to stderr; what `run` and
    /// `check-config` both call.
    /// - Throws: `ExitCode(78)` when caid cannot start with it.
    func loadForRun() throws -> (CaidConfig, RunPreflight) {
        let config = try load()
        do {
            return (config, try RunPreflight.check(config))
        } catch {
            for diagnostic in error.diagnostics { printError(diagnostic.description) }
            let errors = error.diagnostics.filter { $0.severity == .error }.count
            printError("\(env): \(errors) error\(errors == 1 ? "" : "s"); caid did not start")
            throw ExitCode(ConfigError.exitCode)
        }
    }
}
