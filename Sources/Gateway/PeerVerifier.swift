import AsyncHTTPClient
import Attestation
import Foundation
import NIOCore
import NIOHTTP1
import SwiftASN1
import X509

/// Decides whether a gateway's certificate proves an acceptable TEE: the certificate must be self-signed with its
/// own key and carry evidence that binds that key; the Attestation Service at `--as-addr` must accept the evidence
/// for every required policy, in a token that checks (``TokenVerifier``).
public struct PeerVerifier: Sendable {
    public var attestationService: String { service.address }
    public var policyIDs: [String] { service.policyIDs }
    /// When set, tokens must be signed by a key these certificates certify (`CAID_TOKEN_CERTS`, `--token-cert`).
    public let tokenTrust: TokenTrust?
    private let service: AttestationServiceClient

    public init(attestationService: String, policyIDs: [String], tokenTrust: TokenTrust? = nil, http: HTTPClient) {
        service = AttestationServiceClient(address: attestationService, policyIDs: policyIDs, http: http)
        self.tokenTrust = tokenTrust
    }

    /// What was verified, for the log.
    public struct Verdict: Sendable {
        public var tee: String
        public var claims: [String: JSONValue]
    }

    public func verify(certificate der: [UInt8]) async throws(VerificationError) -> Verdict {
        let parsed = try Self.checkCertificate(der)
        guard case .object(let runtime)? = try? JSONDecoder().decode(JSONValue.self, from: Data(parsed.runtimeData.utf8)) else {
            throw VerificationError("the runtime data in the certificate is not JSON")
        }
        let token = try await service.token(tee: parsed.tee, evidence: parsed.evidence, runtimeData: .object(runtime))
        let claims = try TokenVerifier.verify(token, runtimeData: .object(runtime), policyIDs: policyIDs)
        try await tokenTrust?.check(token)
        return Verdict(tee: parsed.tee, claims: claims)
    }

    /// The certificate checks of rats-cert `verify.rs`: issuer = subject, a valid self-signature, the evidence
    /// extension present and binding the key.
    public static func checkCertificate(_ der: [UInt8]) throws(VerificationError) -> RATLSEvidence.Parsed {
        let certificate: Certificate
        do { certificate = try Certificate(derEncoded: der) } catch { throw VerificationError("the gateway's certificate does not parse: \(error)") }
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
