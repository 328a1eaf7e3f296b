import AsyncHTTPClient
import Attestation
import Foundation
import NIOCore
import NIOHTTP1
import RATLS

/// The Attestation Service's RESTful `POST <as>/attestation`, as rats-cert's converter (converter/restful.rs) calls
/// it: TNG clients in the background-check model send it the gateway's evidence, and a gateway in the passport
/// model sends its own evidence to get the token it puts in its certificate. Answers the token text.
public struct AttestationServiceClient: Sendable {
    /// The base address, without a trailing `/` (rats-cert trims it too).
    public let address: String
    public let policyIDs: [String]
    private let http: HTTPClient

    public init(address: String, policyIDs: [String], http: HTTPClient) {
        var base = address
        while base.hasSuffix("/") { base.removeLast() }
        self.address = base
        self.policyIDs = policyIDs.isEmpty ? ["default"] : policyIDs
        self.http = http
    }

    /// `POST <as>/attestation`: the `verification_requests` form of Trustee ≥ 1.6 first, the flat form of ≤ 1.5.2
    /// when the server asks for `tee` (the order TNG's converter uses).
    ///
    /// - Parameters:
    ///   - evidence: the TEE evidence bytes exactly as they are carried (sent base64url).
    ///   - runtimeData: the structured runtime data whose SHA-384 the evidence's report data holds.
    public func token(tee: String, evidence: [UInt8], runtimeData: JSONValue) async throws(VerificationError) -> String {
        let single: [String: JSONValue] = [
            "tee": .string(tee), "evidence": .string(Base64.url(evidence)),
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
            throw VerificationError("the Attestation Service at \(address) refused the evidence (HTTP \(status)): \(body.prefix(400))")
        }
        throw VerificationError("the Attestation Service at \(address) refused the evidence (HTTP \(status)): \(body.prefix(400))")
    }

    private func post(_ body: JSONValue) async throws(VerificationError) -> (Int, String) {
        var request = HTTPClientRequest(url: address + "/attestation")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(bytes: body.canonicalBytes))
        do {
            let response = try await http.execute(request, timeout: .seconds(30))
            let bytes = try await response.body.collect(upTo: 4 << 20)
            return (Int(response.status.code), String(decoding: bytes.readableBytesView, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
        } catch {
            throw VerificationError("cannot reach the Attestation Service at \(address): \(error)")
        }
    }
}
