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
    public let attestationService: String
    public let policyIDs: [String]
    /// When set, tokens must be signed by a key these certificates certify (`CAID_TOKEN_CERTS`).
    public let tokenTrust: TokenTrust?
    private let http: HTTPClient

    public init(attestationService: String, policyIDs: [String], tokenTrust: TokenTrust? = nil, http: HTTPClient) {
        self.tokenTrust = tokenTrust
        var base = attestationService
        while base.hasSuffix("/") { base.removeLast() }
        self.attestationService = base
        self.policyIDs = policyIDs.isEmpty ? ["default"] : policyIDs
        self.http = http
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
        let token = try await askAttestationService(parsed, runtimeData: .object(runtime))
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

    /// `POST <as>/attestation`: the `verification_requests` form of Trustee ≥ 1.6 first, the flat form of ≤ 1.5.2
    /// when the server asks for `tee` (the order TNG's converter uses).
    private func askAttestationService(_ parsed: RATLSEvidence.Parsed, runtimeData: JSONValue) async throws(VerificationError) -> String {
        let single: [String: JSONValue] = [
            "tee": .string(parsed.tee), "evidence": .string(Base64.url(parsed.evidence)),
            "runtime_data": ["structured": runtimeData], "init_data": .null, "runtime_data_hash_algorithm": "sha384",
        ]
        let policies = JSONValue.array(policyIDs.map { .string($0) })
        let current: JSONValue = ["verification_requests": .array([.object(single)]), "policy_ids": policies]
        var flat = single
        flat["policy_ids"] = policies
        flat["init_data_hash_algorithm"] = .null
        let (status, body) = try await post(current)
        if status == 200 { return body }
        if body.contains("missing field `tee`") {
            let (status, body) = try await post(.object(flat))
            if status == 200 { return body }
            throw VerificationError("the Attestation Service refused the evidence (HTTP \(status)): \(body.prefix(400))")
        }
        throw VerificationError("the Attestation Service refused the evidence (HTTP \(status)): \(body.prefix(400))")
    }

    private func post(_ body: JSONValue) async throws(VerificationError) -> (Int, String) {
        var request = HTTPClientRequest(url: attestationService + "/attestation")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(bytes: body.canonicalBytes))
        do {
            let response = try await http.execute(request, timeout: .seconds(30))
            let bytes = try await response.body.collect(upTo: 4 << 20)
            return (Int(response.status.code), String(decoding: bytes.readableBytesView, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
        } catch {
            throw VerificationError("cannot reach the Attestation Service at \(attestationService): \(error)")
        }
    }
}
