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

    /// Makes a certificate with fresh evidence from `attester`, with the GPUs' evidence inside it (the legacy
    /// `gpu_evidence` form an attestation agent gives TNG) when `gpu` finds any.
    public static func make(attester: any Attester, gpu: GPUAttester? = nil, now: Date = Date()) throws -> AttestedCertificate {
        let key = P256.Signing.PrivateKey()
        let spki = Array(key.publicKey.derRepresentation)
        let claims = RATLSEvidence.claims(subjectPublicKeyInfo: spki)
        let reportData = RATLSEvidence.reportData(claims: claims)
        let gpuEvidence = try gpu?.collect(nonce: Array(reportData.prefix(32)))?.embeddedEvidence
        var evidence = try attester.evidence(reportData: reportData, gpuEvidence: gpuEvidence)
        var der = try build(key: key, tee: attester.tee.rawValue, evidence: evidence.canonicalBytes, claims: claims, now: now)
        var omitted = false
        if der.count > uncompressedLimit, case .object(var members) = evidence, members["cc_eventlog"] != nil, members["cc_eventlog"] != .null {
            // The verifier replays the event log when it is there and only warns when it is not; without it the
            // certificate fits in one handshake message, which TNG 2.2.1 clients need.
            members["cc_eventlog"] = .null
            evidence = .object(members)
            der = try build(key: key, tee: attester.tee.rawValue, evidence: evidence.canonicalBytes, claims: claims, now: now)
            omitted = true
        }
        guard der.count <= uncompressedLimit else {
            throw VerificationError("""
                the attested certificate is \(der.count) bytes even without the event log; TNG clients take at most \
                64 KiB without RFC 8879 certificate compression, which caid's TLS stack does not offer
                """)
        }
        return AttestedCertificate(key: key, der: der, eventLogOmitted: omitted)
    }

    private static func build(key: P256.Signing.PrivateKey, tee: String, evidence: [UInt8], claims: [UInt8], now: Date) throws -> [UInt8] {
        let name = try DistinguishedName {
            CommonName("TNG")
            OrganizationName("Inclavare Containers")
        }
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true, keyEncipherment: true, keyAgreement: true))
            SubjectKeyIdentifier(hash: Certificate.PublicKey(key.publicKey))
            Certificate.Extension(oid: evidenceOID, critical: false, value: ArraySlice(RATLSEvidence.tagged(tee: tee, evidence: evidence, claims: claims)))
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
