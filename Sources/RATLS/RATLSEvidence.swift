import Attestation
import Crypto
import Foundation

/// The evidence TNG puts in its certificate (rats-cert, "Interoperable RA-TLS"), built and checked without I/O.
///
/// Binding chain: SubjectPublicKeyInfo → SHA-256 → `pubkey-hash` claim → CBOR claims → SHA-256 = report data →
/// base64url inside `{"rats-rs.raw_runtime_data":…}` (the runtime data) → SHA-384 → the TEE report data.
public enum RATLSEvidence {
    /// CBOR tag of CoCo evidence (`OCBR_TAG_EVIDENCE_COCO_EVIDENCE`).
    public static let cocoEvidenceTag: UInt64 = 0xC0C000
    /// CBOR tag of a CoCo Attestation Service token, the passport model (`OCBR_TAG_EVIDENCE_COCO_TOKEN`; its raw
    /// evidence is the JWT's UTF-8 bytes: rats-cert tee/coco/evidence.rs `CocoAsToken` @ rats-rs 15690513, the
    /// revision TNG v2.2.6 pins).
    public static let cocoTokenTag: UInt64 = 0xC0C001

    /// The CBOR claims buffer for a public key: `{"pubkey-hash": h'<CBOR [1, h'SHA-256(SPKI)']>'}`.
    public static func claims(subjectPublicKeyInfo spki: [UInt8]) -> [UInt8] {
        let hash = CBOR.array([.unsigned(1), .bytes(Array(SHA256.hash(data: spki)))]).encoded
        return CBOR.map([(.text("pubkey-hash"), .bytes(hash))]).encoded
    }

    /// The runtime data JSON the Attestation Service hashes: compact `{"rats-rs.raw_runtime_data":"<b64url>"}`.
    public static func runtimeData(claims: [UInt8]) -> JSONValue {
        ["rats-rs.raw_runtime_data": .string(Base64.url(Array(SHA256.hash(data: claims))))]
    }

    /// The 48 bytes the TEE report must carry for these claims.
    public static func reportData(claims: [UInt8]) -> [UInt8] {
        Array(SHA384.hash(data: runtimeData(claims: claims).canonicalBytes))
    }

    /// The tagged evidence for the certificate extension `2.23.133.5.4.9`.
    public static func tagged(tee: String, evidence: [UInt8], claims: [UInt8]) -> [UInt8] {
        let raw = CBOR.map([
            (.text("tee_type"), .text(tee)),
            (.text("aa_evidence"), .bytes(evidence)),
            (.text("aa_runtime_data"), .text(runtimeData(claims: claims).canonicalString)),
            (.text("aa_runtime_data_hash_algo"), .unsigned(7)),
        ]).encoded
        return CBOR.tagged(cocoEvidenceTag, .array([.bytes(raw), .bytes(claims)])).encoded
    }

    /// The tagged token for the certificate extension in the passport model: the same `[raw, claims]` pair as
    /// ``tagged(tee:evidence:claims:)`` (rats-cert cert/create.rs `generate_evidence_buffer_with_tag` @ 15690513),
    /// the raw part being the token text.
    public static func taggedToken(_ token: String, claims: [UInt8]) -> [UInt8] {
        CBOR.tagged(cocoTokenTag, .array([.bytes(Array(token.utf8)), .bytes(claims)])).encoded
    }

    /// A passport extension read back: the token and the runtime data the token must carry for this key.
    public struct ParsedToken: Sendable {
        public var token: String
        public var runtimeData: JSONValue
        public var claims: [UInt8]
    }

    /// Parses a passport extension and checks that its claims bind `spki`; the token itself is for
    /// ``TokenVerifier`` to check against ``ParsedToken/runtimeData``.
    public static func verifyToken(extensionValue: some Collection<UInt8>, subjectPublicKeyInfo spki: [UInt8]) throws(VerificationError) -> ParsedToken {
        let item: CBOR
        do { item = try CBOR(decoding: extensionValue) } catch { throw VerificationError("the evidence extension is not CBOR: \(error)") }
        guard case .tagged(cocoTokenTag, .array(let parts)) = item, parts.count == 2,
            case .bytes(let tokenBytes) = parts[0], case .bytes(let claims) = parts[1]
        else { throw VerificationError("the evidence extension is not an Attestation Service token (CBOR tag 0xC0C001 over [token, claims])") }
        guard let token = String(validating: tokenBytes, as: UTF8.self) else { throw VerificationError("the token in the certificate is not UTF-8") }
        try checkPubkeyHash(claims: claims, spki: spki)
        return ParsedToken(token: token, runtimeData: runtimeData(claims: claims), claims: claims)
    }

    /// The claims' `pubkey-hash` must be the hash of `spki` with the hash id it names.
    static func checkPubkeyHash(claims: [UInt8], spki: [UInt8]) throws(VerificationError) {
        let claimItem: CBOR
        do { claimItem = try CBOR(decoding: claims) } catch { throw VerificationError("the claims are not CBOR: \(error)") }
        guard case .bytes(let hashItem)? = claimItem["pubkey-hash"], let hashClaim = try? CBOR(decoding: hashItem),
            case .array(let pair) = hashClaim, pair.count == 2, case .unsigned(let hashID) = pair[0], case .bytes(let claimed) = pair[1]
        else { throw VerificationError("the claims carry no pubkey-hash") }
        let actual: [UInt8]
        switch hashID {
        case 1: actual = Array(SHA256.hash(data: spki))
        case 7: actual = Array(SHA384.hash(data: spki))
        case 8: actual = Array(SHA512.hash(data: spki))
        default: throw VerificationError("pubkey-hash uses unknown hash id \(hashID)")
        }
        guard actual == claimed else { throw VerificationError("the evidence does not bind the certificate's key (pubkey-hash differs)") }
    }

    /// What a verifier reads back out of the extension.
    public struct Parsed: Sendable {
        public var tee: String
        /// The TEE evidence exactly as the attester gave it (JSON bytes).
        public var evidence: [UInt8]
        /// The runtime data text as carried, which the Attestation Service hashes.
        public var runtimeData: String
        public var claims: [UInt8]
    }

    /// Parses the extension and checks that its claims bind `spki` and that its runtime data is the one those claims
    /// give; the evidence itself is for the Attestation Service to judge.
    public static func verify(extensionValue: some Collection<UInt8>, subjectPublicKeyInfo spki: [UInt8]) throws(VerificationError) -> Parsed {
        let item: CBOR
        do { item = try CBOR(decoding: extensionValue) } catch { throw VerificationError("the evidence extension is not CBOR: \(error)") }
        guard case .tagged(cocoEvidenceTag, .array(let parts)) = item, parts.count == 2,
            case .bytes(let rawBytes) = parts[0], case .bytes(let claims) = parts[1]
        else { throw VerificationError("the evidence extension is not CoCo evidence (CBOR tag 0xC0C000 over [evidence, claims])") }
        let raw: CBOR
        do { raw = try CBOR(decoding: rawBytes) } catch { throw VerificationError("the evidence is not CBOR: \(error)") }
        guard case .text(let tee)? = raw["tee_type"], case .bytes(let evidence)? = raw["aa_evidence"],
            case .text(let runtime)? = raw["aa_runtime_data"]
        else { throw VerificationError("the evidence lacks tee_type, aa_evidence or aa_runtime_data") }
        try checkPubkeyHash(claims: claims, spki: spki)
        guard runtime == runtimeData(claims: claims).canonicalString else {
            throw VerificationError("the runtime data does not match the claims: \(runtime.prefix(120))")
        }
        return Parsed(tee: tee, evidence: evidence, runtimeData: runtime, claims: claims)
    }
}

/// Why a peer's attested certificate or token was not accepted, in words for the person at the proxy.
public struct VerificationError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
