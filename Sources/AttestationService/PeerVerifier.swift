import AsyncHTTPClient
import Attestation
import Foundation
import NIOCore
import NIOHTTP1
import RATLS
import SwiftASN1
import X509

/// Decides whether a gateway's certificate proves an acceptable TEE: the certificate must be self-signed with its
/// own key, within its validity dates, and carry evidence that binds that key; evidence of the `sample` "TEE" is
/// refused unless ``allowSample``; the Attestation Service at `--as-addr` must accept the evidence for every
/// required policy, in a token that checks (``TokenVerifier``).
///
/// TNG's own verifier is more lenient on both counts: rats-cert's `verify_cert` (rats-cert/src/cert/verify.rs in
/// inclavare-containers/TNG v2.8.0-4-gdd69049) checks the self-signature and the evidence extension but not
/// notBefore/notAfter, and TNG clients leave `sample` evidence to the Attestation Service's policy. caid refuses
/// both itself, before any request to the Attestation Service.
public struct PeerVerifier: Sendable {
    public var attestationService: String { service.address }
    public var policyIDs: [String] { service.policyIDs }
    /// When set, tokens must be signed by a key these certificates certify (`CAID_TOKEN_CERTS`, `--token-cert`).
    public let tokenTrust: TokenTrust?
    /// Whether evidence of the `sample` attester (no TEE at all) may pass to the Attestation Service
    /// (`caid tunnel --allow-sample`; for sharing, a host that itself runs `CAID_ATTESTER=sample`).
    public let allowSample: Bool
    /// The model digests (`sha256:…`) a gateway may serve (`caid tunnel --require-model`): the verified token's
    /// last caid model event must name one. Empty: any model.
    public let requiredModels: [String]
    private let service: AttestationServiceClient

    /// How far the peer's clock may be from this host's: caid's certificates start a minute in the past, TNG's
    /// (rats-cert `Validity::from_now`) at the moment they are made.
    public static let clockSkew: TimeInterval = 300

    public init(
        attestationService: String, policyIDs: [String], tokenTrust: TokenTrust? = nil, allowSample: Bool = false, requiredModels: [String] = [],
        http: HTTPClient
    ) {
        service = AttestationServiceClient(address: attestationService, policyIDs: policyIDs, http: http)
        self.tokenTrust = tokenTrust
        self.allowSample = allowSample
        self.requiredModels = requiredModels
    }

    /// What was verified, for the log.
    public struct Verdict: Sendable {
        public var tee: String
        public var claims: [String: JSONValue]
        /// The certificate's notAfter: no verdict on it outlives this.
        public var notAfter: Date
    }

    public func verify(certificate der: [UInt8], now: Date = Date()) async throws(VerificationError) -> Verdict {
        let (parsed, notAfter) = try Self.checkCertificateAndDates(der, now: now)
        if parsed.tee == "sample", !allowSample {
            throw VerificationError("the peer's certificate carries sample evidence, which proves no TEE at all; refused (allow it only for development: caid tunnel --allow-sample, or CAID_ATTESTER=sample on a sharing host)")
        }
        guard case .object(let runtime)? = try? JSONDecoder().decode(JSONValue.self, from: Data(parsed.runtimeData.utf8)) else {
            throw VerificationError("the runtime data in the certificate is not JSON")
        }
        let token = try await service.token(tee: parsed.tee, evidence: parsed.evidence, runtimeData: .object(runtime))
        let claims = try TokenVerifier.verify(token, runtimeData: .object(runtime), policyIDs: policyIDs)
        try await tokenTrust?.check(token)
        try Self.checkModel(claims, required: requiredModels)
        return Verdict(tee: parsed.tee, claims: claims, notAfter: notAfter)
    }

    /// Refuses a token whose replayed event log does not say the gateway serves one of `required`.
    static func checkModel(_ claims: [String: JSONValue], required: [String]) throws(VerificationError) {
        guard !required.isEmpty else { return }
        guard let served = ModelClaim.digest(in: claims) else {
            throw VerificationError("the Attestation Service's token names no model this gateway measured (no caid load-model event in its claims); --require-model refuses it")
        }
        guard required.contains(served) else {
            throw VerificationError("the gateway serves model \(served), not one --require-model allows (\(required.joined(separator: ", ")))")
        }
    }

    /// The certificate checks of rats-cert `verify.rs`: issuer = subject, a valid self-signature, the evidence
    /// extension present and binding the key; and, unlike rats-cert, the validity dates at `now`.
    public static func checkCertificate(_ der: [UInt8], now: Date = Date()) throws(VerificationError) -> RATLSEvidence.Parsed {
        try checkCertificateAndDates(der, now: now).parsed
    }

    static func checkCertificateAndDates(_ der: [UInt8], now: Date) throws(VerificationError) -> (parsed: RATLSEvidence.Parsed, notAfter: Date) {
        let certificate: Certificate
        do { certificate = try Certificate(derEncoded: der) } catch { throw VerificationError("the gateway's certificate does not parse: \(error)") }
        try checkDates(notBefore: certificate.notValidBefore, notAfter: certificate.notValidAfter, now: now)
        return (try checkEvidence(certificate), certificate.notValidAfter)
    }

    /// Refuses a certificate outside its validity dates, allowing ``clockSkew`` either way.
    public static func checkDates(notBefore: Date, notAfter: Date, now: Date) throws(VerificationError) {
        if now.addingTimeInterval(clockSkew) < notBefore {
            throw VerificationError("the peer's certificate is not valid before \(notBefore) and this host's clock says \(now); one of the two clocks is wrong (check NTP on both)")
        }
        if now.addingTimeInterval(-clockSkew) > notAfter {
            throw VerificationError("the peer's certificate expired at \(notAfter) (this host's clock says \(now)); the peer must present a fresh one (caid renews it every CAID_GATEWAY_CERT_REFRESH; TNG's last 6 hours), or a clock is wrong")
        }
    }

    private static func checkEvidence(_ certificate: Certificate) throws(VerificationError) -> RATLSEvidence.Parsed {
        guard certificate.issuer == certificate.subject else { throw VerificationError("the gateway's certificate is not self-signed") }
        guard certificate.publicKey.isValidSignature(certificate.signature, for: certificate) else {
            throw VerificationError("the gateway's certificate signature does not verify")
        }
        guard let evidence = certificate.extensions.first(where: { $0.oid == AttestedCertificate.evidenceOID }) else {
            throw VerificationError("the gateway's certificate carries no TEE evidence (extension 2.23.133.5.4.9): not an attested gateway")
        }
        var serializer = DER.Serializer()
        do { try serializer.serialize(certificate.publicKey) } catch { throw VerificationError("cannot encode the certificate key: \(error)") }
        return try RATLSEvidence.verify(extensionValue: evidence.value, subjectPublicKeyInfo: serializer.serializedBytes)
    }
}
