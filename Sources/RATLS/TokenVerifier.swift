import Attestation
import Crypto
import Foundation
import _CryptoExtras

/// Checks an Attestation Service token the way TNG's client does (rats-cert `coco/verifier`): the signature with the
/// token's own key, `exp`/`nbf`, the runtime data, and every required policy id. Two token kinds:
///
/// - "simple" (Trustee up to 1.5.x): RS384, `jwk` in the header or the claims, runtime data at
///   `customized_claims.runtime_data`, policies in `evaluation-reports`;
/// - EAR (`eat_profile` Trustee's): ES256 with the `jwk` in the header, every `submods` entry `affirming`, one
///   appraisal policy id, runtime data at `submods.cpu0.ear.veraison.annotated-evidence.runtime_data_claims`.
///
/// Like TNG without `trusted_certs_paths`, the signing key itself is taken from the token: trust comes from
/// reaching the configured Attestation Service.
public enum TokenVerifier {
    static let earProfile = "tag:github.com,2024:confidential-containers/Trustee"

    /// - Returns: the token's claims.
    public static func verify(
        _ token: String, runtimeData expected: JSONValue, policyIDs: [String], now: Date = Date()
    ) throws(VerificationError) -> [String: JSONValue] {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let headerBytes = Base64.decodeURL(parts[0]), let claimBytes = Base64.decodeURL(parts[1]),
            let signature = Base64.decodeURL(parts[2]),
            case .object(let header)? = try? JSONDecoder().decode(JSONValue.self, from: Data(headerBytes)),
            case .object(let claims)? = try? JSONDecoder().decode(JSONValue.self, from: Data(claimBytes))
        else { throw VerificationError("the Attestation Service's answer is not a JWT") }
        let signingInput = Array("\(parts[0]).\(parts[1])".utf8)
        let isEAR = claims["eat_profile"] != nil
        if isEAR {
            guard claims["eat_profile"]?.stringValue == earProfile else {
                throw VerificationError("unsupported EAR profile \(claims["eat_profile"]?.canonicalString ?? "")")
            }
            try verifyES256(header: header, signature: signature, input: signingInput)
        } else {
            try verifyRS384(header: header, claims: claims, signature: signature, input: signingInput)
        }

        guard let exp = claims["exp"]?.integerValue else { throw VerificationError("the token has no exp") }
        guard Double(exp) > now.timeIntervalSince1970 else { throw VerificationError("the token expired at \(Date(timeIntervalSince1970: TimeInterval(exp)))") }
        if let nbf = claims["nbf"]?.integerValue, Double(nbf) > now.timeIntervalSince1970 + 5 {
            throw VerificationError("the token is not valid before \(Date(timeIntervalSince1970: TimeInterval(nbf)))")
        }

        let runtime: JSONValue?
        if isEAR {
            runtime = claims["submods"]?["cpu0"]?["ear.veraison.annotated-evidence"]?["runtime_data_claims"]
        } else {
            runtime = claims["customized_claims"]?["runtime_data"]
        }
        guard case .object(let actual)? = runtime, case .object(let wanted) = expected,
            wanted.allSatisfy({ actual[$0.key] == $0.value })
        else { throw VerificationError("the token's runtime data is not this connection's: the evidence was for another key") }

        var allowed: Set<String> = []
        if isEAR {
            guard case .object(let submods)? = claims["submods"], !submods.isEmpty else { throw VerificationError("the EAR token has no submods") }
            for (name, submod) in submods {
                guard let status = submod["ear.status"]?.stringValue, let policy = submod["ear.appraisal-policy-id"]?.stringValue else {
                    throw VerificationError("EAR submod \(name) lacks ear.status or ear.appraisal-policy-id")
                }
                guard status == "affirming" else { throw VerificationError("EAR submod \(name) is \(status), not affirming") }
                allowed.insert(policy)
            }
            guard allowed.count == 1 else { throw VerificationError("the EAR token names \(allowed.count) appraisal policies; one expected") }
        } else {
            guard let reports = claims["evaluation-reports"]?.arrayValue else { throw VerificationError("the token has no evaluation-reports") }
            allowed = Set(reports.compactMap { $0["policy-id"]?.stringValue })
        }
        for policy in policyIDs where !allowed.contains(policy) {
            throw VerificationError("policy '\(policy)' did not approve this TEE (the token lists \(allowed.sorted().joined(separator: ", ")))")
        }
        return claims
    }

    /// The `exp` claim of a JWT, without checking anything else (for scheduling a renewal).
    public static func expiry(of token: String) -> Date? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let bytes = Base64.decodeURL(parts[1]),
            case .object(let claims)? = try? JSONDecoder().decode(JSONValue.self, from: Data(bytes)),
            let exp = claims["exp"]?.integerValue
        else { return nil }
        return Date(timeIntervalSince1970: TimeInterval(exp))
    }

    private static func verifyRS384(header: [String: JSONValue], claims: [String: JSONValue], signature: [UInt8], input: [UInt8]) throws(VerificationError) {
        guard header["alg"]?.stringValue == "RS384" else {
            throw VerificationError("token algorithm \(header["alg"]?.stringValue ?? "none") is not RS384")
        }
        guard let jwk = header["jwk"] ?? claims["jwk"], jwk["kty"]?.stringValue == "RSA",
            jwk["alg"].map({ $0.stringValue == "RS384" }) ?? true,
            let n = jwk["n"]?.stringValue.flatMap(Base64.decodeURL), let e = jwk["e"]?.stringValue.flatMap(Base64.decodeURL),
            let key = try? _RSA.Signing.PublicKey(n: n, e: e)
        else { throw VerificationError("the token carries no usable RSA jwk") }
        let digest = SHA384.hash(data: input)
        guard key.isValidSignature(_RSA.Signing.RSASignature(rawRepresentation: signature), for: digest, padding: .insecurePKCS1v1_5) else {
            throw VerificationError("the token's RS384 signature does not verify")
        }
    }

    private static func verifyES256(header: [String: JSONValue], signature: [UInt8], input: [UInt8]) throws(VerificationError) {
        guard header["alg"]?.stringValue == "ES256" else {
            throw VerificationError("EAR token algorithm \(header["alg"]?.stringValue ?? "none") is not ES256")
        }
        guard let jwk = header["jwk"], jwk["kty"]?.stringValue == "EC", jwk["crv"]?.stringValue == "P-256",
            let x = jwk["x"]?.stringValue.flatMap(Base64.decodeURL), let y = jwk["y"]?.stringValue.flatMap(Base64.decodeURL),
            x.count == 32, y.count == 32, let key = try? P256.Signing.PublicKey(rawRepresentation: x + y),
            let parsed = try? P256.Signing.ECDSASignature(rawRepresentation: signature)
        else { throw VerificationError("the EAR token carries no usable P-256 jwk in its header") }
        guard key.isValidSignature(parsed, for: input) else { throw VerificationError("the EAR token's ES256 signature does not verify") }
    }
}
