import ArgumentParser
import AsyncHTTPClient
import Attestation
import CaidBase
import CaidConfiguration
import CaidSystemd
import Foundation
import KBSProtocol
import KeyBroker
import Logging
import NIOSSL
import RATLS

/// Builds the KBS client every attestation path of caid uses, from the configuration.
enum KeyBrokerSetup {
    /// The evidence provider `CAID_ATTESTER`, `CAID_GPU_EVIDENCE` and the TEE interface paths ask for.
    static func provider(for config: CaidConfig) throws(AttestationError) -> EvidenceProvider {
        let settings = config.attestation
        return try EvidenceProvider.select(
            config.attester.rawValue, reportRoot: settings.reportRoot, eventLog: settings.eventLog,
            nvmlLibrary: settings.gpuEvidence == .off ? nil : settings.nvmlLibrary, measurements: measurements(for: config).measurements)
    }

    /// The RTMR3 measurements of the model (one per process: its lock orders extends and quotes), or why there
    /// are none.
    static func measurements(for config: CaidConfig) -> (measurements: RuntimeMeasurements?, unavailable: String) {
        let settings = config.attestation
        guard config.attester != .sample else { return (nil, "the sample attester has no measurement registers") }
        // The kernel's own interface first (Linux 6.16), then the older out-of-tree ioctl.
        let sysfs = SysfsRTMR(directory: settings.rtmrDirectory)
        let ioctl = IoctlRTMR(device: settings.tdxGuestDevice, quotes: TDXAttester(reportRoot: settings.reportRoot, eventLog: settings.eventLog))
        let register: any RuntimeRegister
        if sysfs.isAvailable {
            register = sysfs
        } else if ioctl.isAvailable {
            register = ioctl
        } else {
            return (nil, "no RTMR interface: neither \(sysfs.path) (Linux 6.16 and later) nor \(ioctl.device) (the TDX_CMD_EXTEND_RTMR ioctl) is there")
        }
        return (RuntimeMeasurements(register: register, logFile: settings.eventLogFile, form: EventLogForm(rawValue: settings.eventLogForm) ?? .tcg2), "")
    }

    /// The model identity the PAI event names: `CAID_MODEL_ID`, or the bucket path.
    static func modelID(for config: CaidConfig) -> String {
        config.attestation.modelID.isEmpty ? "\(config.objectStorage.bucket):/\(config.objectStorage.prefix)" : config.attestation.modelID
    }

    /// The CA certificates of `CAID_TRUSTEE_CA`, nil when it is not set (then the system's are used).
    static func trusteeRoots(for config: CaidConfig) throws(ConfigError) -> [NIOSSLCertificate]? {
        guard let ca = config.attestation.trusteeCA else { return nil }
        let roots: [NIOSSLCertificate]
        do {
            roots = try NIOSSLCertificate.fromPEMFile(ca)
        } catch {
            throw ConfigError(diagnostics: [ConfigDiagnostic(
                .error, file: config.file, key: "CAID_TRUSTEE_CA",
                message: "'\(ca)' cannot be read as PEM certificates (\(error)); give the file of the CA that signed Trustee's certificate")])
        }
        guard !roots.isEmpty else {
            throw ConfigError(diagnostics: [ConfigDiagnostic(.error, file: config.file, key: "CAID_TRUSTEE_CA", message: "'\(ca)' holds no certificate")])
        }
        return roots
    }

    /// The HTTP client for Trustee (KBS and AS): the system's CA certificates, or only those of `CAID_TRUSTEE_CA`.
    static func httpClient(for config: CaidConfig) throws(ConfigError) -> HTTPClient {
        httpClient(roots: try trusteeRoots(for: config), readTimeout: config.readTimeout)
    }

    static func httpClient(roots: [NIOSSLCertificate]?, readTimeout: Duration) -> HTTPClient {
        guard let roots else { return HTTPTimeouts.client(read: readTimeout) }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(roots)
        return HTTPTimeouts.client(read: readTimeout, tls: tls)
    }

    /// The trusted certificates for Attestation Service tokens (`CAID_TOKEN_CERTS`), nil when none are set.
    static func tokenTrust(for config: CaidConfig) throws(ConfigError) -> TokenTrust? {
        guard !config.attestation.tokenCertificates.isEmpty else { return nil }
        do {
            return try TokenTrust(pemFiles: config.attestation.tokenCertificates)
        } catch {
            throw ConfigError(diagnostics: [ConfigDiagnostic(.error, file: config.file, key: "CAID_TOKEN_CERTS", message: error.description)])
        }
    }

    static func client(for config: CaidConfig, provider: EvidenceProvider, http: HTTPClient, logger: Logger) -> KBSClient {
        KBSClient(
            trusteeURL: config.trusteeURL.absoluteString, protocol: .init(config.kbsProtocol), gpuEvidence: .init(config.attestation.gpuEvidence),
            provider: provider, http: http, logger: logger)
    }

    /// Runs `body` with a client, shutting the HTTP client down afterwards. A host without a TEE is a configuration
    /// problem (exit 78); a KBS failure prints the error and exits 1.
    static func withClient<T>(_ config: CaidConfig, command: String, _ body: (KBSClient) async throws(KBSError) -> T) async throws -> T {
        LogDestination.bootstrap(level: config.logLevel)
        let logger = Logger(label: "caid.\(command)")
        let provider: EvidenceProvider
        do {
            provider = try Self.provider(for: config)
        } catch {
            printError("caid \(command): \(error)")
            throw ExitCode(ConfigError.exitCode)
        }
        if provider.attester.tee == .sample {
            logger.warning("CAID_ATTESTER=sample: this host sends sample evidence, which proves nothing; use it only for development")
        }
        let http: HTTPClient
        do {
            http = try httpClient(for: config)
        } catch {
            printError("caid \(command): \(error)")
            throw ExitCode(ConfigError.exitCode)
        }
        let client = client(for: config, provider: provider, http: http, logger: logger)
        do {
            let result = try await body(client)
            try? await http.shutdown()
            return result
        } catch {
            try? await http.shutdown()
            printError("caid \(command): \(error)")
            throw ExitCode.failure
        }
    }
}

struct AttestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attest",
        abstract: "Prove this TEE to Trustee and print the TEE type, the protocol dialect and the token's claims.",
        discussion: """
            Runs the KBS handshake (RCAR) against TRUSTEE_URL with the evidence CAID_ATTESTER selects, in the dialect \
            CAID_KBS_PROTOCOL selects (auto: 0.4.0, then 0.1.0). The TEE key never leaves memory and is not printed. \
            Exit status: 0 attested, 1 refused or unreachable, 78 configuration error or no TEE.
            """
    )

    @OptionGroup var env: EnvOption

    func run() async throws {
        let config = try env.load()
        let session = try await KeyBrokerSetup.withClient(config, command: "attest") { client throws(KBSError) in
            try await client.attest()
        }
        printOut("tee: \(session.tee)")
        printOut("kbs protocol: \(session.dialect)")
        printOut("gpu evidence: \(session.evidence.gpuForm.map { "\(session.evidence.gpuCount) GPU(s), \($0) form" } ?? "none sent")")
        for missing in session.evidence.missingGPUs {
            printOut("gpu left out: \(missing)")
        }
        printOut("model measured: " + Self.measured(provider: try? KeyBrokerSetup.provider(for: config)))
        printOut("model in the token: \(ModelClaim.digest(in: session.token.claims) ?? "none (the verifier saw no caid load-model event)")")
        printOut("token claims:")
        printOut(Self.pretty(.object(session.token.summary)))
    }

    /// What this host's AA event log says was measured, and through which interface; nothing is extended here.
    static func measured(provider: EvidenceProvider?) -> String {
        guard let measurements = provider?.measurements else { return "none (no RTMR interface, or the sample attester)" }
        let last = try? measurements.withLog { $0?.last(domain: "caid", operation: "load-model") }
        guard let content = last?.content else { return "none yet (caid run measures the model after verifying it)" }
        return "\(content) through \(measurements.register.interface), \(measurements.form.rawValue) event log \(measurements.logFile)"
    }

    /// Indented JSON with sorted keys, for people.
    static func pretty(_ value: JSONValue) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? value.canonicalString
    }
}

struct GetResourceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get-resource",
        abstract: "Attest and fetch a kbs:/// resource from Trustee, as confidential-data-hub get-resource does.",
        discussion: """
            Writes the resource to standard output: its raw bytes, or with --base64 base64-encoded on one line, the \
            way confidential-data-hub prints it. The resource is a secret: redirect it where it belongs. \
            Exit status: 0 written, 1 refused, missing or unreachable, 78 configuration error or no TEE.
            """
    )

    @Argument(help: ArgumentHelp("The resource.", valueName: "kbs:///repository/type/tag"))
    var uri: String

    @Flag(help: "Print the resource base64-encoded.")
    var base64 = false

    @OptionGroup var env: EnvOption

    func run() async throws {
        let resource: ResourceURI
        do {
            resource = try ResourceURI(parsing: uri)
        } catch {
            printError("caid get-resource: \(error.message)")
            throw ExitCode(64)
        }
        let config = try env.load()
        let secret = try await KeyBrokerSetup.withClient(config, command: "get-resource") { client throws(KBSError) in
            try await client.resource(resource)
        }
        defer { secret.wipe() }
        var output = secret.withBytes { base64 ? Array((Base64.standard($0) + "\n").utf8) : Array($0) }
        defer { wipeBytes(&output) }
        var offset = 0
        while offset < output.count {
            let written = output[offset...].withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
            if written < 0, errno == EINTR { continue }
            guard written > 0 else {
                printError("caid get-resource: cannot write to standard output: \(String(cString: strerror(errno)))")
                throw ExitCode.failure
            }
            offset += written
        }
    }
}
