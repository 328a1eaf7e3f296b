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
        /// Trustee did not accept the evidence (its policy or reference values, or a verifier it lacks): retried
        /// with backoff, since the fix is on Trustee's side.
        case rejected
        /// The TLS handshake with Trustee failed: its certificate is not signed by a trusted CA (`CAID_TRUSTEE_CA`
        /// or the system's), is not for `TRUSTEE_URL`'s host, or the two sides share no TLS version. Not retried: an
        /// operator must change the CA, the URL or the server.
        case untrusted
    }

    public var kind: Kind
    /// The step: `auth`, `attest`, `resource default/aliyun/key`.
    public var step: String
    public var status: Int?
    /// The server's `detail`, or the start of its plain-text body.
    public var detail: String
    /// The error variant Trustee named in its `type` (`PolicyDeny`, `AttestationError`…).
    public var variant: String?

    public init(_ kind: Kind, step: String, status: Int? = nil, detail: String, variant: String? = nil) {
        self.kind = kind
        self.step = step
        self.status = status
        self.detail = detail
        self.variant = variant
    }

    /// Whether trying again later can succeed without an operator doing something.
    public var isTransient: Bool { kind == .unavailable || kind == .unauthorized || kind == .rejected }

    /// Whether this `/attest` failure is how a Trustee without an `nvidia` verifier answers device GPU evidence:
    /// openanolis/trustee v1.6.0–v1.8.x panic in the verifier (`Tee::Nvidia => todo!()`), which actix answers by
    /// closing the connection (or a 500 when the AS runs apart); v1.9.0 answers 502 ("not implemented"). Upstream
    /// Trustee, which has the verifier, answers every attestation failure with 401.
    package var marksMissingGPUVerifier: Bool {
        // Only answers that come from Trustee itself count: a proxy's 503 or an unreachable server must not switch a
        // host to the embedded form, which an upstream Trustee accepts without looking at the GPUs.
        guard step == "attest" else { return false }
        guard let status else { return kind == .unavailable && detail.contains("remoteConnectionClosed") }
        return status >= 500 && variant == "AttestationError"
    }

    public var description: String {
        let code = status.map { " (HTTP \($0)\(variant.map { " \($0)" } ?? ""))" } ?? ""
        let advice: String
        switch kind {
        case .unavailable: advice = "; will retry"
        case .unauthorized: advice = "; will attest again"
        case .denied: advice = "; Trustee's policy refuses this host or resource: check the attestation and resource policies"
        case .notFound:
            advice = "; check MODEL_KEY_ID and that the secret exists in Trustee's KMS (Trustee answers a missing resource "
                + "with 'Plugin internal error')"
        case .versionMismatch: advice = "; set CAID_KBS_PROTOCOL to the dialect this Trustee speaks (0.1.0 or 0.4.0)"
        case .protocolViolation: advice = "; is TRUSTEE_URL a Trustee?"
        case .attestation: advice = ""
        case .rejected:
            advice = "; Trustee did not accept this host's evidence: its log names the reason (check the attestation policy "
                + "and reference values); will retry"
        case .untrusted:
            advice = "; the TLS handshake with Trustee failed: set CAID_TRUSTEE_CA to the CA that signed Trustee's certificate, "
                + "and check that TRUSTEE_URL names the host the certificate is for"
        }
        return "KBS \(step) failed\(code): \(detail)\(advice)"
    }
}
