import Attestation
import Crypto
import Foundation
import SwiftASN1
import X509

/// A self-signed certificate carrying this host's TEE evidence, as TNG's egress makes it: a fresh P-256 key,
/// `CN=TNG,O=Inclavare Containers`, serial 42, six hours valid, the evidence in extension `2.23.133.5.4.9` and an
/// empty `2.23.133.5.4.2`.
public struct AttestedCertificate: Sendable {
    public static let evidenceOID: ASN1ObjectIdentifier = [2, 23, 133, 5, 4, 9]
    public static let endorsementOID: ASN1ObjectIdentifier = [2, 23, 133, 5, 4, 2]
    /// The largest certificate TNG 2.2.1 clients take without RFC 8879 compression (one TLS handshake message).
    public static let uncompressedLimit = 0xFFFF - 64

    public let key: P256.Signing.PrivateKey
    public let der: [UInt8]
    /// Whether the CC event log had to be left out to fit ``uncompressedLimit``.
    public let eventLogOmitted: Bool
    /// In the passport model, when the Attestation Service token inside expires; nil for background-check evidence.
    public let tokenExpiry: Date?

    /// A fresh key with this host's evidence bound to it, before the evidence (background check) or a token for it
    /// (passport) goes into a certificate.
    public struct Draft: Sendable {
        public let key: P256.Signing.PrivateKey
        public let tee: String
        /// The CBOR claims buffer carrying the key's `pubkey-hash`.
        public let claims: [UInt8]
        public let evidence: JSONValue
        /// The runtime data the evidence binds, as the Attestation Service must be given it.
        public var runtimeData: JSONValue { RATLSEvidence.runtimeData(claims: claims) }
    }

    /// A fresh key and evidence from `attester` bound to it, with the GPUs' evidence inside (the legacy
    /// `gpu_evidence` form an attestation agent gives TNG) when `gpu` finds any.
    public static func draft(attester: any Attester, gpu: GPUAttester? = nil) throws -> Draft {
        let key = P256.Signing.PrivateKey()
        let claims = RATLSEvidence.claims(subjectPublicKeyInfo: Array(key.publicKey.derRepresentation))
        let reportData = RATLSEvidence.reportData(claims: claims)
        let gpuEvidence = try gpu?.collect(nonce: Array(reportData.prefix(32)))?.embeddedEvidence
        let evidence = try attester.evidence(reportData: reportData, gpuEvidence: gpuEvidence)
        return Draft(key: key, tee: attester.tee.rawValue, claims: claims, evidence: evidence)
    }

    /// The background-check certificate: the evidence itself, for the client to take to its Attestation Service.
    public static func make(attester: any Attester, gpu: GPUAttester? = nil, now: Date = Date()) throws -> AttestedCertificate {
        try backgroundCheck(try draft(attester: attester, gpu: gpu), now: now)
    }

    public static func backgroundCheck(_ draft: Draft, now: Date = Date()) throws -> AttestedCertificate {
        let (key, claims) = (draft.key, draft.claims)
        var evidence = draft.evidence
        let tagged = { (evidence: JSONValue) in RATLSEvidence.tagged(tee: draft.tee, evidence: evidence.canonicalBytes, claims: claims) }
        var der = try build(key: key, taggedEvidence: tagged(evidence), now: now)
        var omitted = false
        if der.count > uncompressedLimit, case .object(var members) = evidence, members["cc_eventlog"] != nil, members["cc_eventlog"] != .null {
            // The verifier replays the event log when it is there and only warns when it is not; without it the
            // certificate fits in one handshake message, which TNG 2.2.1 clients need.
            members["cc_eventlog"] = .null
            evidence = .object(members)
            der = try build(key: key, taggedEvidence: tagged(evidence), now: now)
            omitted = true
        }
        guard der.count <= uncompressedLimit else {
            throw VerificationError("""
                the attested certificate is \(der.count) bytes even without the event log; TNG clients take at most \
                64 KiB without RFC 8879 certificate compression, which caid's TLS stack does not offer
                """)
        }
        return AttestedCertificate(key: key, der: der, eventLogOmitted: omitted, tokenExpiry: nil)
    }

    /// The passport certificate: the Attestation Service's token for `draft`'s evidence in place of the evidence,
    /// under CBOR tag 0xC0C001 (TNG v2.2.6 `tng/src/tunnel/utils/cert_manager.rs` builds it from an
    /// `AttesterPipeline` of the AA attester and the AS converter; rats-cert cert/create.rs and
    /// tee/coco/evidence.rs @ 15690513). The token is small, so the event log never has to be left out.
    public static func passport(_ draft: Draft, token: String, now: Date = Date()) throws -> AttestedCertificate {
        guard let expiry = TokenVerifier.expiry(of: token) else {
            throw VerificationError("the Attestation Service's token has no exp claim; a passport needs one to be renewed in time")
        }
        let der = try build(key: draft.key, taggedEvidence: RATLSEvidence.taggedToken(token, claims: draft.claims), now: now)
        guard der.count <= uncompressedLimit else {
            throw VerificationError("the passport certificate is \(der.count) bytes; TNG clients take at most 64 KiB")
        }
        return AttestedCertificate(key: draft.key, der: der, eventLogOmitted: false, tokenExpiry: expiry)
    }

    private static func build(key: P256.Signing.PrivateKey, taggedEvidence: [UInt8], now: Date) throws -> [UInt8] {
        let name = try DistinguishedName {
            CommonName("TNG")
            OrganizationName("Inclavare Containers")
        }
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true, keyEncipherment: true, keyAgreement: true))
            SubjectKeyIdentifier(hash: Certificate.PublicKey(key.publicKey))
            Certificate.Extension(oid: evidenceOID, critical: false, value: ArraySlice(taggedEvidence))
            Certificate.Extension(oid: endorsementOID, critical: false, value: [])
        }
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(42), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-60), notValidAfter: now.addingTimeInterval(6 * 3600),
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions,
            issuerPrivateKey: .init(key))
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return serializer.serializedBytes
    }
}
