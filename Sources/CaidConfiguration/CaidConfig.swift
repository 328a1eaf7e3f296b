import CaidBase
import Foundation
import Logging

/// The typed configuration of a caid host, read from the `cai.env` file operators already have.
///
/// Keys of the CAI stack keep their names and meaning; settings only caid has start with `CAID_`.
/// Load one with ``load(path:)`` or ``decode(_:file:)``.
public struct CaidConfig: Sendable {
    /// How the model ciphertext was made. Only gocryptfs is open; Alibaba's Sam format is not.
    public enum EncryptionMethod: String, Sendable {
        case gocryptfs
    }

    /// Which evidence caid produces. `auto` takes TDX when the TSM provider is there and otherwise refuses to start.
    public enum Attester: String, Sendable, CaseIterable {
        case auto, tdx, sample
    }

    /// Which dialect of the KBS protocol to speak (`CAID_KBS_PROTOCOL`).
    public enum KBSProtocol: String, Sendable, CaseIterable {
        /// Try 0.4.0, fall back to 0.1.0 on a version mismatch.
        case auto
        /// openanolis Trustee up to 1.5.2.
        case legacy = "0.1.0"
        /// upstream Trustee ≥ 0.14, openanolis ≥ 1.6.
        case current = "0.4.0"
    }

    /// Which form of NVIDIA GPU evidence goes to Trustee (`CAID_GPU_EVIDENCE`).
    public enum GPUEvidence: String, Sendable, CaseIterable {
        /// The device form first; the embedded form with a Trustee that has no `nvidia` verifier. Remembered per server.
        case auto
        /// 0.4.0 additional evidence `{"nvidia": …}`, verified by upstream Trustee's `nvidia` verifier.
        case device
        /// `gpu_evidence` inside the TDX evidence, verified by openanolis Trustee's TDX verifier.
        case embedded
        /// No GPU evidence, even when NVML finds GPUs.
        case off
    }

    /// Where caid finds the TEE's interfaces and whom it trusts for Trustee's TLS and tokens.
    public struct AttestationSettings: Sendable {
        public var gpuEvidence: GPUEvidence = .auto
        /// A PEM file of CA certificates for an `https://` `TRUSTEE_URL` (`CAID_TRUSTEE_CA`), as the attestation
        /// agent's `[token_configs.kbs] cert` and CDH's `kbs_cert`; the system's roots when unset.
        public var trusteeCA: String?
        /// PEM files of certificates that Attestation Service tokens must chain to through their `x5c` header
        /// (`CAID_TOKEN_CERTS`), as TNG's `trusted_certs_paths`; empty: the token's own key is taken.
        public var tokenCertificates: [String] = []
        /// configfs-tsm's report directory (`CAID_TSM_REPORT_DIR`).
        public var reportRoot = "/sys/kernel/config/tsm/report"
        /// The firmware's CC event log (`CAID_CC_EVENTLOG`).
        public var eventLog = "/sys/firmware/acpi/tables/data/CCEL"
        /// The NVML library (`CAID_NVML_LIBRARY`).
        public var nvmlLibrary = "libnvidia-ml.so.1"
        /// Where the kernel's RTMR files are (`CAID_RTMR_DIR`, Linux 6.16 and later).
        public var rtmrDirectory = "/sys/devices/virtual/misc/tdx_guest/measurements"
        /// The TDX guest device, for kernels that extend RTMRs through its ioctl (`CAID_TDX_GUEST_DEVICE`).
        public var tdxGuestDevice = "/dev/tdx_guest"
        /// caid's AA event log (`CAID_EVENTLOG_FILE`): under /run so that it ends with the boot, as RTMR3 does, and
        /// outside /run/caid, which systemd removes at every stop.
        public var eventLogFile = "/run/caid-measurements/eventlog.json"
        /// The event log form the Trustee wants (`CAID_EVENTLOG_FORM`): `tcg2` or `text` (openanolis <= 1.6.0).
        public var eventLogForm = "tcg2"
        /// Whether a bucket without `caid-manifest.json` is refused (`CAID_MODEL_MANIFEST=required`).
        public var requireManifest = false
        /// The PAI event's `model-id` (`CAID_MODEL_ID`); empty: `MODEL_OSS_BUCKET_PATH`.
        public var modelID = ""
    }

    /// Who may read the decrypted model (`CAID_MOUNT_OWNER`, `CAID_MOUNT_MODE`).
    public struct MountSettings: Sendable, Equatable {
        public var uid: UInt32 = 0
        public var gid: UInt32 = 0
        /// Read bits only: files get these, directories these plus `x`.
        public var mode: UInt32 = 0o440
        /// Whether the model is mounted while it downloads (`CAID_MOUNT_STREAMING`), reads waiting for their bytes.
        public var streaming = true
        /// The longest a read of a streaming mount waits for its bytes (`CAID_MOUNT_READ_TIMEOUT`).
        public var readTimeout: Duration = .seconds(120)
    }

    /// The attested gateway's settings (`CAID_GATEWAY_*`).
    public struct Gateway: Sendable {
        public enum Mode: String, Sendable, CaseIterable {
            /// Clients dial `<host>:MODEL_SERVICE_PORT`; nat rules redirect it to the gateway.
            case netfilter
            /// Clients dial the gateway's own port.
            case mapping
            case off
        }

        /// What the gateway's certificate carries (`CAID_GATEWAY_ATTESTATION_MODEL`), TNG's `attest.model`.
        public enum AttestationModel: String, Sendable, CaseIterable {
            /// The evidence; each client asks its Attestation Service.
            case backgroundCheck = "background-check"
            /// A token caid got from the Attestation Service at `TRUSTEE_URL` `as/` for `TRUSTEE_POLICY`.
            case passport
        }

        public var mode: Mode = .netfilter
        public var attestationModel: AttestationModel = .backgroundCheck
        /// In `mapping` mode the port clients dial; in `netfilter` mode the local port the nat rules redirect to.
        public var port: UInt16 = 41001
        public var maxConnections = 256
        /// Open connections from one source address at most.
        public var maxConnectionsPerSource = 64
        /// Tunnel streams (upstream sockets) open at once across all connections.
        public var streamBudget = 4096
        /// How long one tunnel stream may carry no bytes before it is reset.
        public var streamIdleTimeout: Duration = .seconds(300)
        /// MiB one connection may make the gateway buffer; the stream window is sized from it.
        public var connectionBufferMiB = 64
        /// TNG's egress allows hyper's default of 200 concurrent streams.
        public var maxStreams = 200
        /// How long a new connection may send nothing.
        public var firstBytesTimeout: Duration = .seconds(10)
        /// How long the whole TLS handshake may take; TNG <= 2.2.4 clients call their Attestation Service inside it.
        public var handshakeTimeout: Duration = .seconds(60)
        /// RST_STREAM frames one client connection may send in 10 s before it is closed (rapid-reset guard).
        public var maxResets = 2_000
        public var idleTimeout: Duration = .seconds(600)
        public var certificateRefresh: Duration = .seconds(600)
        /// How often the nat rules of `netfilter` mode are checked and put back when gone (a firewall reload).
        public var ruleCheckInterval: Duration = .seconds(10)
        /// Whether caid closes `MODEL_SERVICE_PORT` to the network with filter rules of its own (`CAID_SERVICE_GUARD`),
        /// from start to a clean stop, whatever the gateway is doing.
        public var serviceGuard = true
    }

    /// Where the model ciphertext lives in OSS and how to reach it.
    public struct ObjectStorage: Sendable {
        public var bucket: String
        /// The key prefix inside the bucket, without a leading slash; empty for the whole bucket.
        public var prefix: String
        public var endpoint: URL
        public var accessKeyID: String
        public var secretAccessKey: Secret
        /// The STS session token, when the credentials are temporary.
        public var sessionToken: Secret?
    }

    /// The file this configuration came from.
    public var file: String
    public var trusteeURL: URL
    public var trusteePolicy: String
    public var modelKeyID: ResourceURI
    public var encryptionMethod: EncryptionMethod
    public var objectStorage: ObjectStorage
    /// IP addresses of the other hosts of the model-sharing group; empty when sharing is off.
    public var sharingPeers: [String]
    /// The port sharing peers serve and fetch verified ciphertext on (`CAID_SHARING_PORT`).
    public var sharingPort: UInt16
    public var modelServicePort: UInt16
    public var modelMountPoint: String
    public var healthSocket: String
    /// A group (name or GID) whose members may probe the health socket (`CAID_HEALTH_GROUP`); nil: root only.
    public var healthGroup: String? = nil
    public var cacheDirectory: String
    public var attester: Attester
    public var kbsProtocol: KBSProtocol
    public var gateway: Gateway
    /// GPU evidence, the TEE's interfaces, and the trust anchors for Trustee.
    public var attestation: AttestationSettings
    public var mount: MountSettings
    public var logLevel: Logger.Level
    /// The OSS region for V4 signatures when the endpoint does not name one (`CAID_OSS_REGION`).
    public var ossRegion: String?
    /// `v4` (default) or `v1` for old accounts (`CAID_OSS_SIGNATURE`).
    public var ossSignature: String
    /// An HTTP proxy for OSS that wins over HTTPS_PROXY/HTTP_PROXY (`CAID_OSS_PROXY`), such as a Dragonfly dfdaemon.
    public var ossProxy: String?
    /// How long a connection to OSS, Trustee or an Attestation Service may stay silent in the middle of an answer
    /// before it is dropped and the request retried (`CAID_READ_TIMEOUT`).
    public var readTimeout: Duration = .seconds(30)
    /// Sharing connections open at once (`CAID_SHARING_MAX_CONNECTIONS`); more are closed on accept.
    public var sharingMaxConnections = 64
    /// How long a sharing connection may take to finish its TLS handshake, peer verification included
    /// (`CAID_SHARING_HANDSHAKE_TIMEOUT`).
    public var sharingHandshakeTimeout: Duration = .seconds(30)

    /// Where the verified ciphertext is kept: `CAID_CACHE_DIR/model`.
    public var modelCacheDirectory: String { cacheDirectory + "/model" }

    /// Defaults for keys that may be left out.
    public enum Defaults {
        public static let trusteePolicy = "default"
        public static let modelServicePort: UInt16 = 8080
        public static let modelMountPoint = "/tmp/model"
        public static let healthSocket = "/run/caid/caid.sock"
        public static let cacheDirectory = "/var/lib/caid"
    }

    /// Keys whose values are secrets: never printed, logged or echoed in an error.
    public static let secretKeys: Set<String> = ["MODEL_OSS_SECRET_ACCESS_KEY", "MODEL_OSS_SESSION_TOKEN"]

    /// Every key caid reads; any other key gets a warning.
    public static let knownKeys: [String] = [
        "TRUSTEE_URL", "TRUSTEE_POLICY", "MODEL_KEY_ID", "MODEL_ENCRYPTION_METHOD",
        "MODEL_OSS_BUCKET_PATH", "MODEL_OSS_ENDPOINT", "MODEL_OSS_ACCESS_KEY_ID", "MODEL_OSS_SECRET_ACCESS_KEY",
        "MODEL_OSS_SESSION_TOKEN", "MODEL_SHARING_PEER", "MODEL_SERVICE_PORT", "MODEL_MOUNT_POINT",
        "CAID_HEALTH_SOCKET", "CAID_HEALTH_GROUP", "CAID_CACHE_DIR", "CAID_ATTESTER", "CAID_KBS_PROTOCOL", "CAID_GPU_EVIDENCE",
        "CAID_TRUSTEE_CA", "CAID_TOKEN_CERTS", "CAID_TSM_REPORT_DIR", "CAID_CC_EVENTLOG", "CAID_NVML_LIBRARY", "CAID_RTMR_DIR", "CAID_TDX_GUEST_DEVICE", "CAID_EVENTLOG_FILE", "CAID_EVENTLOG_FORM", "CAID_MODEL_MANIFEST", "CAID_MODEL_ID",
        "CAID_MOUNT_OWNER", "CAID_MOUNT_MODE", "CAID_MOUNT_STREAMING", "CAID_MOUNT_READ_TIMEOUT",
        "CAID_GATEWAY_MODE", "CAID_GATEWAY_ATTESTATION_MODEL", "CAID_GATEWAY_PORT", "CAID_GATEWAY_MAX_CONNECTIONS", "CAID_GATEWAY_MAX_CONNECTIONS_PER_SOURCE", "CAID_GATEWAY_STREAM_BUDGET", "CAID_GATEWAY_STREAM_IDLE_TIMEOUT", "CAID_GATEWAY_CONNECTION_BUFFER", "CAID_GATEWAY_MAX_STREAMS", "CAID_GATEWAY_MAX_RESETS",
        "CAID_GATEWAY_FIRST_BYTES_TIMEOUT", "CAID_GATEWAY_HANDSHAKE_TIMEOUT", "CAID_GATEWAY_IDLE_TIMEOUT", "CAID_GATEWAY_CERT_REFRESH", "CAID_GATEWAY_RULE_CHECK", "CAID_SHARING_PORT", "CAID_LOG_LEVEL", "CAID_OSS_REGION", "CAID_OSS_SIGNATURE", "CAID_OSS_PROXY",
        "CAID_READ_TIMEOUT",
        "CAID_SERVICE_GUARD", "CAID_SHARING_MAX_CONNECTIONS", "CAID_SHARING_HANDSHAKE_TIMEOUT",
    ]

    /// Reads and validates a configuration file. `CAID_*` settings may also come from the environment, where they
    /// override the file (so `CAID_HEALTH_SOCKET=/tmp/caid.sock caid run` works without editing cai.env); the CAI
    /// keys come from the file only.
    /// - Returns: the configuration and the warnings found on the way.
    /// - Throws: ``ConfigError`` listing every problem, each naming file, line and key.
    public static func load(
        path: String, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(ConfigError) -> (config: CaidConfig, warnings: [ConfigDiagnostic]) {
        var warnings: [ConfigDiagnostic] = []
        var bytes = try readSecretFile(path)
        defer { wipeBytes(&bytes) }
        var info = stat()
        if stat(path, &info) == 0, info.st_mode & 0o077 != 0 {
            warnings.append(ConfigDiagnostic(
                .warning, file: path,
                message: "is readable by group or others (mode \(String(info.st_mode & 0o777, radix: 8))) and holds "
                    + "secrets; run: chmod 600 \(path)"))
        }
        let overrides = environment.filter { knownKeys.contains($0.key) && $0.key.hasPrefix("CAID_") }
        var (config, diagnostics) = decode(bytes, file: path, overrides: overrides)
        diagnostics = warnings + diagnostics
        guard let config, !diagnostics.contains(where: { $0.severity == .error }) else {
            throw ConfigError(diagnostics: diagnostics)
        }
        return (config, diagnostics)
    }

    /// Largest cai.env read: it is a page of settings, not data.
    static let maximumFileSize = 1 << 20

    /// The file's bytes in one array read to once with `read(2)`: no `Data`, no growing buffer, so the only copy of
    /// the secrets in it is the one the caller wipes.
    private static func readSecretFile(_ path: String) throws(ConfigError) -> [UInt8] {
        func failure(_ reason: String) -> ConfigError {
            ConfigError(diagnostics: [ConfigDiagnostic(
                .error, file: path, message: "cannot be read (\(reason)); pass the cai.env file with --env PATH")])
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw failure(String(cString: strerror(errno))) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw failure(String(cString: strerror(errno))) }
        guard info.st_mode & S_IFMT == S_IFREG else { throw failure("not a regular file") }
        guard info.st_size <= maximumFileSize else {
            throw failure("\(info.st_size) bytes; a cai.env is at most \(maximumFileSize / 1024) KiB")
        }
        // One byte more than the size, so that a file growing while read is seen as such rather than cut.
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size) + 1)
        let read = bytes.withUnsafeMutableBytes { buffer in Result { () throws(FileIO.Failure) in try FileIO.read(fd, into: buffer) } }
        let filled: Int
        switch read {
        case .success(let count):
            filled = count
        case .failure(let error):
            wipeBytes(&bytes)
            throw failure(error.description)
        }
        guard filled < bytes.count else {
            wipeBytes(&bytes)
            throw failure("it changed while being read")
        }
        bytes.removeLast(bytes.count - filled)
        return bytes
    }

    /// Parses and validates the contents of a configuration file.
    /// - Returns: the configuration when there is no error, and every diagnostic found.
    /// - Parameter overrides: settings that replace the file's (from the environment).
    public static func decode(
        _ bytes: [UInt8], file: String, overrides: [String: String] = [:]
    ) -> (config: CaidConfig?, diagnostics: [ConfigDiagnostic]) {
        var decoder: Decoder
        let syntaxErrors: [EnvFile.SyntaxError]
        do {
            // The parsed entries go out of scope here, so the decoder holds the only reference to each value and
            // wipes it in place (wiping a shared array would wipe a copy of it).
            let parsed = EnvFile.parse(bytes)
            syntaxErrors = parsed.errors
            decoder = Decoder(file: file, entries: parsed.entries)
        }
        defer { decoder.wipeValues() }
        for (key, value) in overrides {
            decoder.values[key] = (Array(value.utf8), 0)
            decoder.fromEnvironment.insert(key)
        }
        decoder.brokenKeys = Set(syntaxErrors.compactMap(\.key))
        decoder.diagnostics += syntaxErrors.map {
            ConfigDiagnostic(.error, file: file, line: $0.line, key: $0.key, message: $0.message)
        }
        let config = decoder.decode()
        // File-wide findings first, then by line; findings about missing keys last.
        let diagnostics = decoder.diagnostics.enumerated().sorted {
            ($0.element.line ?? Int.max, $0.offset) < ($1.element.line ?? Int.max, $1.offset)
        }.map(\.element)
        return (diagnostics.contains { $0.severity == .error } ? nil : config, diagnostics)
    }
}

extension CaidConfig {
    /// The effective configuration as `KEY=value` lines, secrets redacted, for `caid check-config`.
    public var redactedSummary: [(key: String, value: String)] {
        [
            ("TRUSTEE_URL", trusteeURL.absoluteString),
            ("TRUSTEE_POLICY", trusteePolicy),
            ("MODEL_KEY_ID", modelKeyID.description),
            ("MODEL_ENCRYPTION_METHOD", encryptionMethod.rawValue),
            ("MODEL_OSS_BUCKET_PATH", "\(objectStorage.bucket):/\(objectStorage.prefix)"),
            ("MODEL_OSS_ENDPOINT", objectStorage.endpoint.absoluteString),
            ("MODEL_OSS_ACCESS_KEY_ID", objectStorage.accessKeyID),
            ("MODEL_OSS_SECRET_ACCESS_KEY", objectStorage.secretAccessKey.isEmpty ? "(empty)" : "<redacted>"),
            ("MODEL_OSS_SESSION_TOKEN", objectStorage.sessionToken == nil ? "(not set)" : "<redacted>"),
            ("MODEL_SHARING_PEER", sharingPeers.isEmpty ? "(sharing off)" : sharingPeers.joined(separator: " ")),
            ("MODEL_SERVICE_PORT", String(modelServicePort)),
            ("CAID_SHARING_PORT", String(sharingPort)),
            ("MODEL_MOUNT_POINT", modelMountPoint),
            ("CAID_MOUNT_OWNER", "\(mount.uid):\(mount.gid)"),
            ("CAID_MOUNT_MODE", "0" + String(mount.mode, radix: 8)),
            ("CAID_MOUNT_STREAMING", mount.streaming ? "on" : "off"),
            ("CAID_MOUNT_READ_TIMEOUT", String(mount.readTimeout.components.seconds)),
            ("CAID_HEALTH_SOCKET", healthSocket),
            ("CAID_HEALTH_GROUP", healthGroup ?? "(not set: root only)"),
            ("CAID_CACHE_DIR", cacheDirectory),
            ("CAID_ATTESTER", attester.rawValue),
            ("CAID_KBS_PROTOCOL", kbsProtocol.rawValue),
            ("CAID_GPU_EVIDENCE", attestation.gpuEvidence.rawValue),
            ("CAID_TRUSTEE_CA", attestation.trusteeCA ?? "(the system's CA certificates)"),
            ("CAID_TOKEN_CERTS", attestation.tokenCertificates.isEmpty ? "(not set: the token's own key)" : attestation.tokenCertificates.joined(separator: " ")),
            ("CAID_TSM_REPORT_DIR", attestation.reportRoot),
            ("CAID_RTMR_DIR", attestation.rtmrDirectory),
            ("CAID_TDX_GUEST_DEVICE", attestation.tdxGuestDevice),
            ("CAID_EVENTLOG_FILE", attestation.eventLogFile),
            ("CAID_EVENTLOG_FORM", attestation.eventLogForm),
            ("CAID_MODEL_MANIFEST", attestation.requireManifest ? "required" : "optional"),
            ("CAID_MODEL_ID", attestation.modelID.isEmpty ? "(MODEL_OSS_BUCKET_PATH)" : attestation.modelID),
            ("CAID_CC_EVENTLOG", attestation.eventLog),
            ("CAID_NVML_LIBRARY", attestation.nvmlLibrary),
            ("CAID_GATEWAY_MODE", gateway.mode.rawValue),
            ("CAID_GATEWAY_ATTESTATION_MODEL", gateway.attestationModel.rawValue),
            ("CAID_GATEWAY_PORT", String(gateway.port)),
            ("CAID_GATEWAY_MAX_CONNECTIONS", String(gateway.maxConnections)),
            ("CAID_GATEWAY_MAX_STREAMS", String(gateway.maxStreams)),
            ("CAID_GATEWAY_MAX_CONNECTIONS_PER_SOURCE", String(gateway.maxConnectionsPerSource)),
            ("CAID_GATEWAY_STREAM_BUDGET", String(gateway.streamBudget)),
            ("CAID_GATEWAY_STREAM_IDLE_TIMEOUT", String(gateway.streamIdleTimeout.components.seconds)),
            ("CAID_GATEWAY_CONNECTION_BUFFER", String(gateway.connectionBufferMiB)),
            ("CAID_GATEWAY_FIRST_BYTES_TIMEOUT", String(gateway.firstBytesTimeout.components.seconds)),
            ("CAID_GATEWAY_MAX_RESETS", String(gateway.maxResets)),
            ("CAID_GATEWAY_HANDSHAKE_TIMEOUT", String(gateway.handshakeTimeout.components.seconds)),
            ("CAID_GATEWAY_IDLE_TIMEOUT", String(gateway.idleTimeout.components.seconds)),
            ("CAID_GATEWAY_CERT_REFRESH", String(gateway.certificateRefresh.components.seconds)),
            ("CAID_GATEWAY_RULE_CHECK", String(gateway.ruleCheckInterval.components.seconds)),
            ("CAID_SERVICE_GUARD", gateway.serviceGuard ? "on" : "off"),
            ("CAID_SHARING_MAX_CONNECTIONS", String(sharingMaxConnections)),
            ("CAID_SHARING_HANDSHAKE_TIMEOUT", String(sharingHandshakeTimeout.components.seconds)),
            ("CAID_LOG_LEVEL", logLevel.rawValue),
            ("CAID_OSS_REGION", ossRegion ?? "(from the endpoint)"),
            ("CAID_OSS_SIGNATURE", ossSignature),
            ("CAID_OSS_PROXY", ossProxy ?? "(HTTPS_PROXY/HTTP_PROXY/NO_PROXY, or none)"),
            ("CAID_READ_TIMEOUT", String(readTimeout.components.seconds)),
        ]
    }
}

/// Turns parsed entries into a ``CaidConfig``, collecting a diagnostic for every problem.
private struct Decoder {
    let file: String
    var values: [String: (value: [UInt8], line: Int)] = [:]
    var diagnostics: [ConfigDiagnostic] = []
    /// Keys whose line did not parse: already reported, so not reported again as missing.
    var brokenKeys: Set<String> = []
    /// Keys set by environment variables rather than the file.
    var fromEnvironment: Set<String> = []

    init(file: String, entries: [EnvFile.Entry]) {
        self.file = file
        for entry in entries { values[entry.key] = (entry.value, entry.line) }
        let known = Set(CaidConfig.knownKeys)
        for entry in entries where !known.contains(entry.key) {
            let hint = entry.key.hasPrefix("CAID_")
                ? "not a setting of this caid version; see etc/caid/cai.env.example for the settings it has"
                : "unknown key, ignored; check its spelling against etc/caid/cai.env.example"
            diagnostics.append(ConfigDiagnostic(.warning, file: file, line: entry.line, key: entry.key, message: hint))
        }
    }

    /// Overwrites every value read from the file, secrets among them.
    mutating func wipeValues() {
        for key in values.keys { values[key]?.value.withUnsafeMutableBytes { Secret.zero($0) } }
    }

    mutating func warning(_ key: String, _ message: String) {
        diagnostics.append(ConfigDiagnostic(
            .warning, file: fromEnvironment.contains(key) ? "environment variable" : file, line: values[key]?.line, key: key, message: message))
    }

    mutating func error(_ key: String, _ message: String) {
        if values[key] == nil, brokenKeys.contains(key) { return }
        if fromEnvironment.contains(key) {
            diagnostics.append(ConfigDiagnostic(.error, file: "environment variable", key: key, message: message))
            return
        }
        diagnostics.append(ConfigDiagnostic(.error, file: file, line: values[key]?.line, key: key, message: message))
    }

    /// The value of a non-secret key as text; `nil` when absent (or, with `required`, an error).
    mutating func text(_ key: String, required: Bool = false) -> String? {
        guard let entry = values[key] else {
            if required { error(key, "is missing; add \(key)=\"...\" (see etc/caid/cai.env.example)") }
            return nil
        }
        let value = String(decoding: entry.value, as: UTF8.self)
        if required, value.isEmpty {
            error(key, "is empty; it is required")
            return nil
        }
        if !CaidConfig.secretKeys.contains(key), Self.looksLikePlaceholder(value) {
            diagnostics.append(ConfigDiagnostic(
                .warning, file: file, line: entry.line, key: key,
                message: "'\(value)' looks like the template's placeholder; put the real value here"))
        }
        return value.isEmpty ? nil : value
    }

    mutating func secret(_ key: String, required: Bool) -> Secret? {
        guard let entry = values[key], !entry.value.isEmpty else {
            if required { error(key, values[key] == nil ? "is missing; it is required" : "is empty; it is required") }
            return nil
        }
        return Secret(entry.value)
    }

    static func looksLikePlaceholder(_ value: String) -> Bool {
        (value.hasPrefix("<") && value.hasSuffix(">")) || value.lowercased().contains("xxxx")
    }

    mutating func url(_ key: String, _ text: String?) -> URL? {
        guard let text else { return nil }
        let withScheme = text.contains("://") ? text : "https://" + text
        guard let url = URL(string: withScheme), let scheme = url.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = url.host, !host.isEmpty
        else {
            error(key, "'\(text)' is not an http:// or https:// URL with a host")
            return nil
        }
        return url
    }

    mutating func absolutePath(_ key: String, default defaultValue: String) -> String {
        guard let path = text(key) else { return defaultValue }
        guard path.hasPrefix("/") else {
            error(key, "'\(path)' is not an absolute path; start it with '/'")
            return defaultValue
        }
        return path
    }

    /// An absolute path that may be left out.
    mutating func optionalAbsolutePath(_ key: String) -> String? {
        guard let path = text(key) else { return nil }
        guard path.hasPrefix("/") else {
            error(key, "'\(path)' is not an absolute path; start it with '/'")
            return nil
        }
        return path
    }

    mutating func decode() -> CaidConfig? {
        let trustee = url("TRUSTEE_URL", text("TRUSTEE_URL", required: true))
        let policy = text("TRUSTEE_POLICY") ?? CaidConfig.Defaults.trusteePolicy

        var keyID: ResourceURI?
        if let raw = text("MODEL_KEY_ID", required: true) {
            do { keyID = try ResourceURI(parsing: raw) } catch { self.error("MODEL_KEY_ID", error.message) }
        }

        var method = CaidConfig.EncryptionMethod.gocryptfs
        if let raw = text("MODEL_ENCRYPTION_METHOD") {
            switch raw.lowercased() {
            case "gocryptfs": method = .gocryptfs
            case "sam":
                error("MODEL_ENCRYPTION_METHOD",
                    "'sam' is Alibaba's closed format, which caid cannot read; re-encrypt the model with "
                        + "'caid encrypt' (or gocryptfs) and set MODEL_ENCRYPTION_METHOD=\"gocryptfs\"")
            default:
                error("MODEL_ENCRYPTION_METHOD", "'\(raw)' is not a method caid knows; expected \"gocryptfs\"")
            }
        }

        var bucket: String?
        var prefix = ""
        if let raw = text("MODEL_OSS_BUCKET_PATH", required: true) {
            if let colon = raw.firstIndex(of: ":") {
                let name = String(raw[..<colon])
                var path = raw[raw.index(after: colon)...]
                while path.hasPrefix("/") { path = path.dropFirst() }
                if name.isEmpty || name.contains(where: { $0 == "/" || $0.isWhitespace }) {
                    error("MODEL_OSS_BUCKET_PATH", "'\(raw)' has no valid bucket name before ':'; expected bucket:/path")
                } else {
                    bucket = name
                    prefix = String(path)
                }
            } else {
                error("MODEL_OSS_BUCKET_PATH", "'\(raw)' has no ':'; expected bucket:/path (as ossfs writes it)")
            }
        }
        let endpoint = url("MODEL_OSS_ENDPOINT", text("MODEL_OSS_ENDPOINT", required: true))
        let accessKeyID = text("MODEL_OSS_ACCESS_KEY_ID", required: true)
        let secretKey = secret("MODEL_OSS_SECRET_ACCESS_KEY", required: true)
        let token = secret("MODEL_OSS_SESSION_TOKEN", required: false)

        var peers: [String] = []
        if let raw = text("MODEL_SHARING_PEER") {
            for peer in raw.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "," }).map(String.init) {
                if Self.isIPAddress(peer) {
                    peers.append(peer)
                } else {
                    error("MODEL_SHARING_PEER", "'\(peer)' is not an IP address; list peer IPs separated by spaces")
                }
            }
        }

        var port = CaidConfig.Defaults.modelServicePort
        if let raw = text("MODEL_SERVICE_PORT") {
            if let value = UInt16(raw), value > 0 {
                port = value
            } else {
                error("MODEL_SERVICE_PORT", "'\(raw)' is not a TCP port; expected a number from 1 to 65535")
            }
        }
        let mountPoint = absolutePath("MODEL_MOUNT_POINT", default: CaidConfig.Defaults.modelMountPoint)
        let socket = absolutePath("CAID_HEALTH_SOCKET", default: CaidConfig.Defaults.healthSocket)
        let cache = absolutePath("CAID_CACHE_DIR", default: CaidConfig.Defaults.cacheDirectory)
        if socket.utf8.count > 107 {
            error("CAID_HEALTH_SOCKET", "'\(socket)' is longer than the 107 bytes a Unix socket path may have")
        }

        var attester = CaidConfig.Attester.auto
        if let raw = text("CAID_ATTESTER") {
            if let value = CaidConfig.Attester(rawValue: raw.lowercased()) {
                attester = value
            } else {
                error("CAID_ATTESTER", "'\(raw)' is not an attester; expected auto, tdx or sample")
            }
        }
        var kbsProtocol = CaidConfig.KBSProtocol.auto
        if let raw = text("CAID_KBS_PROTOCOL") {
            if let value = CaidConfig.KBSProtocol(rawValue: raw.lowercased()) {
                kbsProtocol = value
            } else {
                error("CAID_KBS_PROTOCOL", "'\(raw)' is not a KBS protocol version; expected auto, 0.1.0 or 0.4.0")
            }
        }
        var attestation = CaidConfig.AttestationSettings()
        if let raw = text("CAID_GPU_EVIDENCE") {
            if let value = CaidConfig.GPUEvidence(rawValue: raw.lowercased()) {
                attestation.gpuEvidence = value
            } else {
                error("CAID_GPU_EVIDENCE", "'\(raw)' is not a GPU evidence setting; expected auto, device, embedded or off")
            }
        }
        attestation.trusteeCA = optionalAbsolutePath("CAID_TRUSTEE_CA")
        if let raw = text("CAID_TOKEN_CERTS") {
            for path in raw.split(whereSeparator: { $0 == " " || $0 == "," }).map(String.init) {
                if path.hasPrefix("/") { attestation.tokenCertificates.append(path) } else {
                    error("CAID_TOKEN_CERTS", "'\(path)' is not an absolute path; list PEM files separated by spaces")
                }
            }
        }
        attestation.reportRoot = absolutePath("CAID_TSM_REPORT_DIR", default: attestation.reportRoot)
        attestation.eventLog = absolutePath("CAID_CC_EVENTLOG", default: attestation.eventLog)
        attestation.nvmlLibrary = text("CAID_NVML_LIBRARY") ?? attestation.nvmlLibrary
        attestation.rtmrDirectory = absolutePath("CAID_RTMR_DIR", default: attestation.rtmrDirectory)
        attestation.tdxGuestDevice = absolutePath("CAID_TDX_GUEST_DEVICE", default: attestation.tdxGuestDevice)
        attestation.eventLogFile = absolutePath("CAID_EVENTLOG_FILE", default: attestation.eventLogFile)
        if let raw = text("CAID_EVENTLOG_FORM") {
            if ["tcg2", "text"].contains(raw) { attestation.eventLogForm = raw } else {
                error("CAID_EVENTLOG_FORM", "'\(raw)' is not tcg2 (upstream Trustee, openanolis >= 1.6.2) or text (openanolis <= 1.6.0)")
            }
        }
        if let raw = text("CAID_MODEL_MANIFEST") {
            switch raw {
            case "required": attestation.requireManifest = true
            case "optional": attestation.requireManifest = false
            default: error("CAID_MODEL_MANIFEST", "'\(raw)' is not required or optional")
            }
        }
        if let raw = text("CAID_MODEL_ID") {
            if raw.contains(where: { $0 == " " || $0 == "\"" || $0 == "\\" || $0.isNewline }) || raw.isEmpty {
                error("CAID_MODEL_ID", "'\(raw)' may hold no spaces, quotes, backslashes or newlines (openanolis <= 1.6.0 reads event contents as one word)")
            } else {
                attestation.modelID = raw
            }
        }
        var mount = CaidConfig.MountSettings()
        if let raw = text("CAID_MOUNT_OWNER") {
            let parts = raw.split(separator: ":", omittingEmptySubsequences: false)
            if parts.count <= 2, let uid = UInt32(parts[0]), let gid = parts.count == 2 ? UInt32(parts[1]) : uid {
                mount.uid = uid
                mount.gid = gid
            } else {
                error("CAID_MOUNT_OWNER", "'\(raw)' is not UID or UID:GID (numbers, as the inference container's user sees them)")
            }
        }
        if let raw = text("CAID_MOUNT_MODE") {
            if let value = UInt32(raw, radix: 8), value & ~UInt32(0o444) == 0, value != 0 {
                mount.mode = value
            } else {
                error("CAID_MOUNT_MODE", "'\(raw)' is not octal read bits such as 0440 or 0444; the mount is read-only, so only r bits count")
            }
        }
        if let raw = text("CAID_MOUNT_STREAMING") {
            switch raw.lowercased() {
            case "on", "true", "yes", "1": mount.streaming = true
            case "off", "false", "no", "0": mount.streaming = false
            default: error("CAID_MOUNT_STREAMING", "'\(raw)' is not on (mount while downloading) or off (download, then mount)")
            }
        }
        mount.readTimeout = .seconds(count("CAID_MOUNT_READ_TIMEOUT", default: 120))
        if trustee?.scheme?.lowercased() == "http", let entry = values["TRUSTEE_URL"] {
            diagnostics.append(ConfigDiagnostic(
                .warning, file: file, line: entry.line, key: "TRUSTEE_URL",
                message: "is plain http://: anyone on the network path to Trustee can read the evidence and token, "
                    + "block the attestation, and hand caid a key of their own (the model key itself stays secret: "
                    + "it is encrypted to the TEE key); with write access to the bucket too, that serves a model of "
                    + "their choosing. Use https:// (CAID_TRUSTEE_CA for a private CA) unless the path to Trustee is "
                    + "a private network you trust"))
        }
        var sharingPort: UInt16 = 41002
        if let raw = text("CAID_SHARING_PORT") {
            if let value = UInt16(raw), value > 0 { sharingPort = value } else {
                error("CAID_SHARING_PORT", "'\(raw)' is not a TCP port; expected a number from 1 to 65535")
            }
        }
        var gateway = CaidConfig.Gateway()
        if let raw = text("CAID_GATEWAY_MODE") {
            if let value = CaidConfig.Gateway.Mode(rawValue: raw.lowercased()) {
                gateway.mode = value
            } else {
                error("CAID_GATEWAY_MODE", "'\(raw)' is not a gateway mode; expected netfilter, mapping or off")
            }
        }
        if let raw = text("CAID_GATEWAY_ATTESTATION_MODEL") {
            // TNG's configuration spells it `background_check`; take both.
            let spelled = raw.lowercased().replacingOccurrences(of: "_", with: "-")
            if let value = CaidConfig.Gateway.AttestationModel(rawValue: spelled) {
                gateway.attestationModel = value
            } else {
                error("CAID_GATEWAY_ATTESTATION_MODEL", "'\(raw)' is not an attestation model; expected background-check or passport")
            }
        }
        if let raw = text("CAID_GATEWAY_PORT") {
            if let value = UInt16(raw), value > 0 { gateway.port = value } else {
                error("CAID_GATEWAY_PORT", "'\(raw)' is not a TCP port; expected a number from 1 to 65535")
            }
        }
        if gateway.mode != .off, gateway.port == port {
            error("CAID_GATEWAY_PORT", "is \(port), the same as MODEL_SERVICE_PORT; the gateway needs a port of its own")
        }
        gateway.maxConnections = count("CAID_GATEWAY_MAX_CONNECTIONS", default: gateway.maxConnections)
        gateway.maxStreams = count("CAID_GATEWAY_MAX_STREAMS", default: gateway.maxStreams)
        gateway.maxConnectionsPerSource = count("CAID_GATEWAY_MAX_CONNECTIONS_PER_SOURCE", default: gateway.maxConnectionsPerSource)
        gateway.streamBudget = count("CAID_GATEWAY_STREAM_BUDGET", default: gateway.streamBudget)
        gateway.streamIdleTimeout = .seconds(count("CAID_GATEWAY_STREAM_IDLE_TIMEOUT", default: 300))
        gateway.connectionBufferMiB = count("CAID_GATEWAY_CONNECTION_BUFFER", default: gateway.connectionBufferMiB)
        gateway.maxResets = count("CAID_GATEWAY_MAX_RESETS", default: gateway.maxResets)
        gateway.firstBytesTimeout = .seconds(count("CAID_GATEWAY_FIRST_BYTES_TIMEOUT", default: 10))
        gateway.handshakeTimeout = .seconds(count("CAID_GATEWAY_HANDSHAKE_TIMEOUT", default: 60))
        if gateway.handshakeTimeout < .seconds(35) {
            // A TNG <= 2.2.4 client needs the handshake open while its Attestation Service answers.
            warning("CAID_GATEWAY_HANDSHAKE_TIMEOUT", "is \(gateway.handshakeTimeout.components.seconds) s; TNG <= 2.2.4 clients ask their Attestation Service inside the TLS handshake, so a slow AS then makes them fail (60 s is the default)")
        }
        gateway.idleTimeout = .seconds(count("CAID_GATEWAY_IDLE_TIMEOUT", default: 600))
        gateway.certificateRefresh = .seconds(count("CAID_GATEWAY_CERT_REFRESH", default: 600))
        gateway.ruleCheckInterval = .seconds(count("CAID_GATEWAY_RULE_CHECK", default: 10))
        if let raw = text("CAID_SERVICE_GUARD") {
            switch raw.lowercased() {
            case "on", "true", "yes", "1": gateway.serviceGuard = true
            case "off", "false", "no", "0": gateway.serviceGuard = false
            default: error("CAID_SERVICE_GUARD", "'\(raw)' is not on or off")
            }
        }
        var level = Logger.Level.info
        if let raw = text("CAID_LOG_LEVEL") {
            if let value = Logger.Level(rawValue: raw.lowercased()) {
                level = value
            } else {
                let names = Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")
                error("CAID_LOG_LEVEL", "'\(raw)' is not a log level; expected one of \(names)")
            }
        }

        let region = text("CAID_OSS_REGION")
        let proxy = text("CAID_OSS_PROXY")
        var signature = "v4"
        if let raw = text("CAID_OSS_SIGNATURE") {
            if ["v4", "v1"].contains(raw.lowercased()) {
                signature = raw.lowercased()
            } else {
                error("CAID_OSS_SIGNATURE", "'\(raw)' is not a signature version; expected v4 or v1")
            }
        }

        let readTimeout = Duration.seconds(count("CAID_READ_TIMEOUT", default: 30))

        let sharingMaxConnections = count("CAID_SHARING_MAX_CONNECTIONS", default: 64)
        let sharingHandshakeTimeout = Duration.seconds(count("CAID_SHARING_HANDSHAKE_TIMEOUT", default: 30))

        // Resolved to a GID by `caid run` (and check-config), which may read the group database; here only its form.
        let healthGroup = text("CAID_HEALTH_GROUP").flatMap { $0.isEmpty ? nil : $0 }
        if let healthGroup, healthGroup.contains(where: { $0 == ":" || $0 == "/" || $0.isWhitespace }) {
            error("CAID_HEALTH_GROUP", "'\(healthGroup)' is not a group name or GID")
        }

        guard let trustee, let keyID, let bucket, let endpoint, let accessKeyID, let secretKey else { return nil }
        var config = CaidConfig(
            file: file, trusteeURL: trustee, trusteePolicy: policy, modelKeyID: keyID, encryptionMethod: method,
            objectStorage: .init(
                bucket: bucket, prefix: prefix, endpoint: endpoint, accessKeyID: accessKeyID,
                secretAccessKey: secretKey, sessionToken: token),
            sharingPeers: peers, sharingPort: sharingPort, modelServicePort: port, modelMountPoint: mountPoint, healthSocket: socket,
            cacheDirectory: cache, attester: attester, kbsProtocol: kbsProtocol, gateway: gateway, attestation: attestation, mount: mount, logLevel: level, ossRegion: region, ossSignature: signature, ossProxy: proxy,
            sharingMaxConnections: sharingMaxConnections, sharingHandshakeTimeout: sharingHandshakeTimeout)
        config.readTimeout = readTimeout
        config.healthGroup = healthGroup
        return config
    }

    /// A positive whole number setting (a limit, or seconds).
    mutating func count(_ key: String, default value: Int) -> Int {
        guard let raw = text(key) else { return value }
        guard let parsed = Int(raw), parsed > 0, parsed <= 1_000_000 else {
            error(key, "'\(raw)' is not a positive whole number")
            return value
        }
        return parsed
    }

    static func isIPAddress(_ text: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }
}
