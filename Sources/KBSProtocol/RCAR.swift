import Attestation
import Crypto
import Foundation

/// The messages of the KBS attestation handshake (Request, Challenge, Attestation, Response), built and read
/// without any I/O. ``KBSClient`` sends them.
public enum RCAR {
    /// What `/auth` answered.
    public struct Challenge: Sendable, Equatable {
        /// Used verbatim: standard base64 with `+` and `/`, never decoded.
        public var nonce: String
        /// The hash the server asked for (`selected-hash-algorithm`), SHA-384 when it asked for none.
        public var hash: HashName

        public init(nonce: String, hash: HashName = .sha384) {
            self.nonce = nonce
            self.hash = hash
        }
    }

    /// The hashes a 0.4.0 server may select.
    public enum HashName: String, Sendable {
        case sha256, sha384, sha512

        func digest(_ bytes: [UInt8]) -> [UInt8] {
            switch self {
            case .sha256: Array(SHA256.hash(data: bytes))
            case .sha384: Array(SHA384.hash(data: bytes))
            case .sha512: Array(SHA512.hash(data: bytes))
            }
        }
    }

    /// The `/auth` body. `extra-params` is the empty string in both dialects: the legacy server demands a string,
    /// and a 0.4.0 server takes any value (and defaults to SHA-384), so a probe in 0.4.0 reaches a legacy server's
    /// version check instead of failing to deserialize.
    public static func request(dialect: KBSDialect, tee: TEEType) -> [UInt8] {
        JSONValue.object(["version": .string(dialect.rawValue), "tee": .string(tee.rawValue), "extra-params": ""]).canonicalBytes
    }

    public static func parseChallenge(_ body: [UInt8]) throws(KBSError) -> Challenge {
        guard let value = try? JSONDecoder().decode(JSONValue.self, from: Data(body)), let nonce = value["nonce"]?.stringValue, !nonce.isEmpty else {
            throw KBSError(.protocolViolation, step: "auth", detail: "the challenge is not JSON with a 'nonce': \(excerpt(body))")
        }
        var hash = HashName.sha384
        if let selected = value["extra-params"]?["selected-hash-algorithm"]?.stringValue {
            guard let name = HashName(rawValue: selected.lowercased()) else {
                throw KBSError(.protocolViolation, step: "auth", detail: "the server selected hash '\(selected)', which caid does not support")
            }
            hash = name
        }
        return Challenge(nonce: nonce, hash: hash)
    }

    /// The report data the TEE evidence must carry, exactly as the KBS recomputes it.
    /// - legacy: SHA-384 of sorted compact `{"nonce","tee-pubkey"}`;
    /// - 0.4.0: the server's hash of JCS `{"additional-evidence","nonce","tee-pubkey"}`.
    public static func binding(dialect: KBSDialect, challenge: Challenge, publicKey: JSONValue, additionalEvidence: String) -> [UInt8] {
        switch dialect {
        case .legacy:
            return HashName.sha384.digest(JSONValue.object(["nonce": .string(challenge.nonce), "tee-pubkey": publicKey]).canonicalBytes)
        case .current:
            return challenge.hash.digest(JSONValue.object([
                "additional-evidence": .string(additionalEvidence), "nonce": .string(challenge.nonce), "tee-pubkey": publicKey,
            ]).canonicalBytes)
        }
    }

    /// The `/attest` body with fresh evidence from `provider`, and what it carries.
    /// - Parameter gpu: the GPU evidence form, nil for none. In 0.1.0 GPUs always travel embedded.
    ///
    /// GPU nonces: the device form's reports carry the first 32 bytes of the server's hash of JCS
    /// `{"nonce","tee-pubkey"}` (confidential-containers/trustee `kbs/src/attestation/backend.rs`, v0.15.0–v0.17.0,
    /// and `deps/verifier/src/nvidia/mod.rs` `regularize_data(…, 32, …)`). Embedded reports carry the first 32 bytes
    /// of the TDX report data, as Trustiflux does; openanolis/trustee does not compare that nonce (v1.5.2–v1.9.0).
    public static func attestation(
        dialect: KBSDialect, challenge: Challenge, key: TEEKey, provider: EvidenceProvider, gpu form: GPUEvidenceForm?
    ) throws(KBSError) -> (body: [UInt8], summary: EvidenceSummary) {
        let publicKey = key.publicJWK
        var summary = EvidenceSummary(tee: provider.attester.tee)
        func gpuEvidence(nonce: [UInt8]) throws(AttestationError) -> GPUAttester.Collection? {
            guard form != nil, let collection = try provider.gpu?.collect(nonce: Array(nonce.prefix(32))) else { return nil }
            summary.missingGPUs = collection.missing
            guard !collection.devices.isEmpty else { return nil }
            summary.gpuCount = collection.devices.count
            return collection
        }
        do {
            switch dialect {
            case .legacy:
                let reportData = binding(dialect: .legacy, challenge: challenge, publicKey: publicKey, additionalEvidence: "")
                let gpu = try gpuEvidence(nonce: reportData)
                summary.gpuForm = gpu == nil ? nil : .embedded
                let evidence = try provider.attester.evidence(reportData: reportData, gpuEvidence: gpu?.embeddedEvidence)
                let body = JSONValue.object(["tee-pubkey": publicKey, "tee-evidence": .string(evidence.canonicalString)]).canonicalBytes
                return (body, summary)
            case .current:
                let runtimeData: JSONValue = ["nonce": .string(challenge.nonce), "tee-pubkey": publicKey]
                var additional = ""
                var embedded: JSONValue?
                var reportData: [UInt8]
                if form == .device {
                    if let gpu = try gpuEvidence(nonce: challenge.hash.digest(runtimeData.canonicalBytes)) {
                        additional = JSONValue.object(["nvidia": gpu.deviceEvidence]).canonicalString
                        summary.gpuForm = .device
                    }
                    reportData = binding(dialect: .current, challenge: challenge, publicKey: publicKey, additionalEvidence: additional)
                } else {
                    reportData = binding(dialect: .current, challenge: challenge, publicKey: publicKey, additionalEvidence: "")
                    if let gpu = try gpuEvidence(nonce: reportData) {
                        embedded = gpu.embeddedEvidence
                        summary.gpuForm = .embedded
                    }
                }
                let evidence = try provider.attester.evidence(reportData: reportData, gpuEvidence: embedded)
                let body = JSONValue.object([
                    "init-data": .null,
                    "runtime-data": runtimeData,
                    "tee-evidence": ["primary_evidence": evidence, "additional_evidence": .string(additional)],
                ]).canonicalBytes
                return (body, summary)
            }
        } catch {
            throw KBSError(.attestation, step: "attest", detail: error.message)
        }
    }

    /// The token from a successful `/attest`.
    public static func parseToken(_ body: [UInt8]) throws(KBSError) -> AttestationToken {
        guard let value = try? JSONDecoder().decode(JSONValue.self, from: Data(body)), let token = value["token"]?.stringValue else {
            throw KBSError(.protocolViolation, step: "attest", detail: "the answer has no 'token': \(excerpt(body))")
        }
        return try AttestationToken(parsing: token)
    }

    /// Classifies a non-200 answer by what the server says, and by the status only when it says nothing typed.
    ///
    /// Trustee answers `{"type": "https://github.com/confidential-containers/kbs/errors/<Variant>", "detail": …}`
    /// (`kbs/src/error.rs`), but the status of a variant differs by server: confidential-containers/trustee
    /// v0.15.0–v0.17.0 answers 401 for everything but 404s; openanolis/trustee v1.5.2–v1.8.x answers
    /// `AttestationError` with 500 and `PolicyDeny` with 403, v1.9.0 `AttestationError` from RCAR with 502. A missing
    /// resource is `PluginInternalError` (the local-fs plugin's read failure) with 401 or 500, not a 404.
    public static func failure(step: String, status: Int, body: [UInt8]) -> KBSError {
        let value = try? JSONDecoder().decode(JSONValue.self, from: Data(body))
        let detail = value?["detail"]?.stringValue ?? excerpt(body)
        let variant = value?["type"]?.stringValue.flatMap { $0.split(separator: "/").last.map(String.init) }
        let kind = classify(step: step, status: status, variant: variant, detail: detail.lowercased())
        return KBSError(kind, step: step, status: status, detail: detail, variant: variant)
    }

    private static func classify(step: String, status: Int, variant: String?, detail lower: String) -> KBSError.Kind {
        if lower.contains("version mismatch") { return .versionMismatch }
        if let variant {
            switch variant {
            case "PolicyDeny": return .denied
            case "TokenNotFound", "TokenVerifierError": return .unauthorized
            case "AttestationError": return step == "resource" || step.hasPrefix("resource ") ? .unauthorized : .rejected
            case "PluginInternalError" where step.hasPrefix("resource "): return .notFound
            case "PluginNotFound", "InvalidRequestPath": return .notFound
            case "JweError", "SerdeError": return .protocolViolation
            // The KBS of openanolis helm chart 1.0.0 (openanolis/trustee@9def33a `kbs/src/http/error.rs`) had its own names.
            case "ProtocolVersion": return .versionMismatch
            case "MissingCookie", "InvalidCookie", "ExpiredCookie", "UnAuthenticatedCookie": return .unauthorized
            case "AttestationFailed": return .rejected
            case "ResourceNotFound", "ReadSecretFailed": return .notFound
            default: break
            }
        }
        if step == "auth", status == 400 || status == 500, lower.contains("deserialize") || lower.contains("content type") {
            // A legacy server fails to parse a 0.4.0 body before it ever compares versions.
            return .versionMismatch
        }
        switch status {
        case 401: return step == "attest" ? .rejected : .unauthorized
        case 403: return .denied
        case 404: return .notFound
        case 500...599: return .unavailable
        default: return .protocolViolation
        }
    }

    /// The first 300 characters of a body, printable, for an error message.
    static func excerpt(_ body: [UInt8]) -> String {
        if body.isEmpty { return "(empty body)" }
        let text = String(decoding: body.prefix(300), as: UTF8.self)
            .map { $0.isASCII && ($0.asciiValue ?? 0) < 0x20 ? " " : $0 }
        return String(text) + (body.count > 300 ? "… (\(body.count) bytes)" : "")
    }
}
