import Attestation
import Foundation

/// The token the KBS returns from `/attest`: a JWT whose claims caid shows and whose `exp` says how long it may be
/// reused. caid does not verify its signature (the KBS does, when it is presented); it is kept only as long as the
/// KBS session it belongs to.
public struct AttestationToken: Sendable {
    public let raw: String
    public let claims: [String: JSONValue]

    public init(parsing raw: String) throws(KBSError) {
        let parts = raw.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let payload = Base64.decodeURL(parts[1]),
            let value = try? JSONDecoder().decode(JSONValue.self, from: Data(payload)), case .object(let claims) = value
        else { throw KBSError(.protocolViolation, step: "attest", detail: "the token is not a JWT with a JSON payload") }
        self.raw = raw
        self.claims = claims
    }

    /// When the token stops being valid, from `exp`.
    public var expires: Date? { claims["exp"]?.integerValue.map { Date(timeIntervalSince1970: TimeInterval($0)) } }

    /// True while the token is valid for at least `margin` more.
    public func isFresh(now: Date = Date(), margin: TimeInterval = 30) -> Bool {
        guard let expires else { return false }
        return expires.timeIntervalSince(now) > margin
    }

    /// The claims without the bulky ones (`jwk`, raw evidence), for `caid attest` and the logs.
    public var summary: [String: JSONValue] {
        claims.filter { $0.key != "jwk" }
    }
}
