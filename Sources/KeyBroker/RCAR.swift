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

    /// The `/attest` body with fresh evidence from `provider`.
    public static func attestation(
        dialect: KBSDialect, challenge: Challenge, key: TEEKey, provider: EvidenceProvider
    ) throws(KBSError) -> [UInt8] {
        let publicKey = key.publicJWK
        do {
            switch dialect {
            case .legacy:
                let reportData = binding(dialect: .legacy, challenge: challenge, publicKey: publicKey, additionalEvidence: "")
                let gpu = try provider.gpu?.collect(nonce: Array(reportData.prefix(32)))
                let evidence = try provider.attester.evidence(reportData: reportData, gpuEvidence: gpu?.legacyEvidence)
                return JSONValue.object(["tee-pubkey": publicKey, "tee-evidence": .string(evidence.canonicalString)]).canonicalBytes
            case .current:
                let runtimeData: JSONValue = ["nonce": .string(challenge.nonce), "tee-pubkey": publicKey]
                let deviceData = challenge.hash.digest(runtimeData.canonicalBytes)
                var additional = ""
                if let gpu = try provider.gpu?.collect(nonce: Array(deviceData.prefix(32))), !gpu.devices.isEmpty {
                    additional = JSONValue.object(["nvidia": gpu.additionalEvidence]).canonicalString
                }
                let reportData = binding(dialect: .current, challenge: challenge, publicKey: publicKey, additionalEvidence: additional)
                let evidence = try provider.attester.evidence(reportData: reportData, gpuEvidence: nil)
                return JSONValue.object([
                    "init-data": .null,
                    "runtime-data": runtimeData,
                    "tee-evidence": ["primary_evidence": evidence, "additional_evidence": .string(additional)],
                ]).canonicalBytes
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

    /// Classifies a non-200 answer. The `detail` of an RFC 7807 body is kept; a plain-text body (actix extractor
    /// errors, the AS's Debug output) is kept as text.
    public static func failure(step: String, status: Int, body: [UInt8]) -> KBSError {
        let detail: String
        if let value = try? JSONDecoder().decode(JSONValue.self, from: Data(body)), let text = value["detail"]?.stringValue {
            detail = text
        } else {
            detail = excerpt(body)
        }
        let lower = detail.lowercased()
        let kind: KBSError.Kind
        if lower.contains("version mismatch") {
            kind = .versionMismatch
        } else if step == "auth", status == 400 || status == 500, lower.contains("deserialize") || lower.contains("content type") {
            // A legacy server fails to parse a 0.4.0 body before it ever compares versions.
            kind = .versionMismatch
        } else {
            switch status {
            case 401: kind = .unauthorized
            case 403: kind = .denied
            case 404: kind = .notFound
            case 500...599: kind = .unavailable
            default: kind = .protocolViolation
            }
        }
        return KBSError(kind, step: step, status: status, detail: detail)
    }

    /// The first 300 characters of a body, printable, for an error message.
    static func excerpt(_ body: [UInt8]) -> String {
        if body.isEmpty { return "(empty body)" }
        let text = String(decoding: body.prefix(300), as: UTF8.self)
            .map { $0.isASCII && ($0.asciiValue ?? 0) < 0x20 ? " " : $0 }
        return String(text) + (body.count > 300 ? "… (\(body.count) bytes)" : "")
    }
}
