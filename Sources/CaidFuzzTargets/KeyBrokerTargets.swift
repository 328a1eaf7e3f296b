import Foundation
import KBSProtocol

/// TEE keys of each wrap algorithm, made once per process: the fuzzer exercises the header and `epk` parsing and
/// the unwrap refusals (a JWE made for another key never unwraps, as in production).
enum FuzzTEEKeys {
    static let keys: [TEEKey] = TEEKey.Algorithm.allCases.compactMap { try? TEEKey($0) }
}

extension FuzzTarget {
    /// The KBS's JSON answers: the `/auth` challenge, the `/attest` token and the error bodies of every step.
    static let kbsJSON = FuzzTarget(name: "kbs-json", maxLength: 8192) { bytes in
        let body = Array(bytes)
        _ = try? RCAR.parseChallenge(body)
        if let token = try? RCAR.parseToken(body) {
            _ = token.isFresh()
            _ = token.summary
        }
        for (step, status) in [("auth", 400), ("attest", 401), ("resource default/model/key", 500), ("resource", 404)] {
            _ = RCAR.failure(step: step, status: status, body: body).description
        }
    }

    /// A KBS resource answer: the JWE in either layout, then the unwrap with the TEE key its `alg` names.
    static let jwe = FuzzTarget(name: "jwe", maxLength: 8192) { bytes in
        guard let jwe = try? JWE(parsing: Array(bytes)) else { return }
        for key in FuzzTEEKeys.keys where key.algorithm.rawValue == jwe.algorithm {
            _ = try? jwe.decrypt(with: key)
        }
    }
}
