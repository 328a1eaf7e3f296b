/// A failure talking to the KBS, carrying what the operator needs: the step, the HTTP status, the server's own
/// `detail`, and whether trying again can help.
public struct KBSError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The network or the server failed (connection refused, timeout, 5xx): retried.
        case unavailable
        /// 401: the session or token is not (or no longer) accepted: retried with a fresh handshake.
        case unauthorized
        /// 403: Trustee's policy refused this TEE or this resource. Not retried.
        case denied
        /// 404: no such resource. Not retried.
        case notFound
        /// Neither dialect is spoken by this server. Not retried.
        case versionMismatch
        /// The server answered something that is not the protocol (bad JSON, a huge body, an undecryptable JWE).
        case protocolViolation
        /// The TEE evidence could not be produced here.
        case attestation
    }

    public var kind: Kind
    /// The step: `auth`, `attest`, `resource default/aliyun/key`.
    public var step: String
    public var status: Int?
    /// The server's `detail`, or the start of its plain-text body.
    public var detail: String

    public init(_ kind: Kind, step: String, status: Int? = nil, detail: String) {
        self.kind = kind
        self.step = step
        self.status = status
        self.detail = detail
    }

    /// Whether trying again later can succeed without an operator doing something.
    public var isTransient: Bool { kind == .unavailable || kind == .unauthorized }

    public var description: String {
        let code = status.map { " (HTTP \($0))" } ?? ""
        let advice: String
        switch kind {
        case .unavailable: advice = "; will retry"
        case .unauthorized: advice = "; will attest again"
        case .denied: advice = "; Trustee's policy refuses this host or resource: check the attestation and resource policies"
        case .notFound: advice = "; check MODEL_KEY_ID and that the secret exists in Trustee's KMS"
        case .versionMismatch: advice = "; set CAID_KBS_PROTOCOL to the dialect this Trustee speaks (0.1.0 or 0.4.0)"
        case .protocolViolation: advice = "; is TRUSTEE_URL a Trustee?"
        case .attestation: advice = ""
        }
        return "KBS \(step) failed\(code): \(detail)\(advice)"
    }
}
