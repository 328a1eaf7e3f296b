import AsyncHTTPClient
import Attestation
import CaidBase
import CaidCore
import Foundation
import KBSProtocol
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL

/// The client side of a Trustee Key Broker Service: attests this host (RCAR) and fetches `kbs:///` resources.
///
/// `TRUSTEE_URL` is an opaque prefix: `kbs/v0/…` is appended to it. One client keeps one session: its cookie jar
/// (every cookie, load-balancer stickiness included), its TEE key and its token, reused until it expires.
public actor KBSClient {
    /// What a successful handshake established.
    public struct Session: Sendable {
        public var dialect: KBSDialect
        public var tee: TEEType
        public var token: AttestationToken
        /// What evidence went to Trustee: the GPU form and the GPUs left out.
        public var evidence: EvidenceSummary
        /// The key the KBS encrypts this session's resources to.
        let key: TEEKey
    }

    /// How hard to try before giving up with the last error (the supervisor retries the service later).
    public struct RetryPolicy: Sendable {
        public var attempts: Int
        public var firstDelay: Duration
        public var requestTimeout: Duration

        public init(attempts: Int = 4, firstDelay: Duration = .milliseconds(500), requestTimeout: Duration = .seconds(60)) {
            self.attempts = attempts
            self.firstDelay = firstDelay
            self.requestTimeout = requestTimeout
        }
    }

    /// Sent with every request, as the attestation agent's client names itself (`attestation-agent-kbs-client/…`),
    /// so that Trustee's logs tell caid apart.
    public static let userAgent = "caid-kbs-client/\(CaidVersion.current)"

    private let base: String
    private let choice: DialectChoice
    private let gpuChoice: GPUEvidenceChoice
    private let provider: EvidenceProvider
    private let currentKeyAlgorithm: TEEKey.Algorithm
    private let http: HTTPClient
    private let retry: RetryPolicy
    private let logger: Logger
    private let now: @Sendable () -> Date

    private var jar = CookieJar()
    private var state = KBSSessionState<Session>()
    private var waiting: [Int: CheckedContinuation<KBSSessionState<Session>.Established, any Error>] = [:]
    private var nextWaiter = 0
    /// What this server was found to speak, remembered for the next handshakes.
    private var dialect: KBSDialect?
    private var gpuForm: GPUEvidenceForm?
    private var keys: [TEEKey.Algorithm: TEEKey] = [:]

    /// - Parameters:
    ///   - trusteeURL: `TRUSTEE_URL`; a trailing `/` is dropped.
    ///   - gpuEvidence: which GPU evidence form to send (`auto` finds the one this server verifies).
    ///   - currentKeyAlgorithm: the TEE key for the 0.4.0 dialect (the legacy one always uses RSA1_5).
    ///   - now: the wall clock that token and cookie expiries are compared with (tests move it forward).
    public init(
        trusteeURL: String, protocol choice: DialectChoice, gpuEvidence: GPUEvidenceChoice = .auto,
        provider: EvidenceProvider, currentKeyAlgorithm: TEEKey.Algorithm = .ecdhES_A256KW, http: HTTPClient,
        retry: RetryPolicy = .init(), logger: Logger, now: @escaping @Sendable () -> Date = { Date() }
    ) {
        var base = trusteeURL
        while base.hasSuffix("/") { base.removeLast() }
        self.base = base
        self.choice = choice
        self.gpuChoice = gpuEvidence
        self.provider = provider
        self.currentKeyAlgorithm = currentKeyAlgorithm
        self.http = http
        self.retry = retry
        self.logger = logger
        self.now = now
    }

    /// The current session, attesting first when there is none or its token or cookie is about to expire.
    /// - Parameter retrying: told each failure that is about to be retried, in words for health.
    public func attest(retrying report: (@Sendable (String) async -> Void)? = nil) async throws(KBSError) -> Session {
        try await retrying("attest", report: report) { () throws(KBSError) in try await established().session }
    }

    /// Attests again now, whatever the state of the current session.
    public func reattest() async throws(KBSError) -> Session {
        state.invalidate()
        return try await attest()
    }

    /// The resource at `uri`, decrypted with this session's TEE key.
    public func resource(_ uri: ResourceURI) async throws(KBSError) -> Secret {
        try await retrying("resource \(uri.path)") { () throws(KBSError) in
            let established = try await established()
            let step = "resource \(uri.path)"
            let (status, body) = try await send(.GET, "resource/\(uri.path)", body: nil, step: step)
            guard status == 200 else {
                let error = RCAR.failure(step: step, status: status, body: body)
                if error.kind == .unauthorized { state.invalidate(generation: established.generation) }
                throw error
            }
            do throws(JWEError) {
                return try JWE(parsing: body).decrypt(with: established.session.key)
            } catch {
                throw KBSError(.protocolViolation, step: step, status: status, detail: error.message)
            }
        }
    }

    /// Runs `body` until it succeeds, fails permanently, or the attempts are used up.
    private func retrying<T>(
        _ step: String, report: (@Sendable (String) async -> Void)? = nil, _ body: () async throws(KBSError) -> T
    ) async throws(KBSError) -> T {
        let schedule = RetrySchedule(attempts: retry.attempts, firstDelay: retry.firstDelay, maximumDelay: .seconds(60), jitter: .none)
        var attempt = 1
        while true {
            do {
                return try await body()
            } catch {
                guard error.isTransient, !Task.isCancelled, let delay = schedule.delay(after: attempt, random: 0) else { throw error }
                logger.warning("\(error); attempt \(attempt + 1) of \(retry.attempts) in \(delay)")
                await report?("\(error); retrying (attempt \(attempt + 1) of \(retry.attempts))")
                try? await Task.sleep(for: delay)
                attempt += 1
            }
        }
    }

    /// A valid session: the current one, the one another caller is establishing, or a new handshake.
    private func established() async throws(KBSError) -> KBSSessionState<Session>.Established {
        let waiter = nextWaiter
        nextWaiter += 1
        switch state.acquire(waiter: waiter, now: now()) {
        case .use(let established):
            return established
        case .startHandshake:
            do throws(KBSError) {
                let session = try await handshake()
                let completion = state.handshakeSucceeded(
                    session, tokenExpires: session.token.expires, cookieExpires: jar.expiry(of: "kbs-session-id"), now: now())
                guard let established = completion.established else {
                    throw KBSError(.protocolViolation, step: "attest", detail: "the session state lost the new session")
                }
                for id in completion.waiters { waiting.removeValue(forKey: id)?.resume(returning: established) }
                return established
            } catch {
                for id in state.handshakeFailed().waiters { waiting.removeValue(forKey: id)?.resume(throwing: error) }
                throw error
            }
        case .wait:
            do {
                return try await withTaskCancellationHandler {
                    try await withCheckedThrowingContinuation { continuation in waiting[waiter] = continuation }
                } onCancel: {
                    Task { await self.cancel(waiter: waiter) }
                }
            } catch let error as KBSError {
                throw error
            } catch {
                throw KBSError(.unavailable, step: "attest", detail: "cancelled while waiting for the handshake")
            }
        }
    }

    private func cancel(waiter: Int) {
        guard state.cancel(waiter: waiter) else { return }
        waiting.removeValue(forKey: waiter)?.resume(throwing: CancellationError())
    }

    /// One RCAR handshake, negotiating what this server speaks: in `auto`, a version mismatch on 0.4.0 falls back
    /// to 0.1.0, and GPU evidence the server has no verifier for falls back to the embedded form.
    private func handshake() async throws(KBSError) -> Session {
        let candidates: [KBSDialect]
        switch choice {
        case .legacy: candidates = [.legacy]
        case .current: candidates = [.current]
        case .auto: candidates = dialect.map { [$0] } ?? [.current, .legacy]
        }
        var mismatch: KBSError?
        for candidate in candidates {
            do {
                let established = try await handshake(candidate)
                if dialect != candidate {
                    logger.info("KBS speaks protocol \(candidate)", metadata: ["kbs": "\(base)"])
                }
                dialect = candidate
                return established
            } catch where error.kind == .versionMismatch {
                logger.info("KBS refused protocol \(candidate): \(error.detail)")
                mismatch = error
            }
        }
        var error = mismatch ?? KBSError(.versionMismatch, step: "auth", detail: "no dialect to try")
        if candidates.count > 1 { error.detail = "neither 0.4.0 nor 0.1.0 is accepted; last answer: \(error.detail)" }
        throw error
    }

    /// The GPU evidence forms to try, in order, for `candidate`.
    private func gpuForms(for candidate: KBSDialect) -> [GPUEvidenceForm?] {
        guard provider.gpu != nil else { return [nil] }
        switch (candidate, gpuChoice) {
        case (_, .off): return [nil]
        // The 0.1.0 protocol has no additional evidence: GPUs travel inside the TDX evidence.
        case (.legacy, _): return [.embedded]
        case (.current, .device): return [.device]
        case (.current, .embedded): return [.embedded]
        case (.current, .auto): return gpuForm.map { [$0] } ?? [.device, .embedded]
        }
    }

    private func handshake(_ candidate: KBSDialect) async throws(KBSError) -> Session {
        let forms = gpuForms(for: candidate)
        var lastError: KBSError?
        for (index, form) in forms.enumerated() {
            do {
                let session = try await attempt(candidate, gpu: form)
                if candidate == .current, form != nil, session.evidence.gpuForm != nil, gpuForm != form {
                    logger.info("Trustee verifies GPU evidence in the \(form.map(\.rawValue) ?? "") form", metadata: ["kbs": "\(base)"])
                    gpuForm = form
                }
                return session
            } catch let failure as KBSHandshakeFailure {
                // Only a failure that marks a server without the `nvidia` verifier moves on to the next form.
                guard index + 1 < forms.count, failure.sentDeviceEvidence, failure.error.marksMissingGPUVerifier else { throw failure.error }
                logger.warning("Trustee could not take device GPU evidence (\(failure.error)); sending it inside the TDX evidence instead")
                lastError = failure.error
            } catch let error as KBSError {
                throw error
            } catch {
                throw KBSError(.protocolViolation, step: "attest", detail: "\(error)")
            }
        }
        throw lastError ?? KBSError(.attestation, step: "attest", detail: "no GPU evidence form to try")
    }

    /// `/auth`, evidence, `/attest` once, with fresh cookies.
    private func attempt(_ candidate: KBSDialect, gpu form: GPUEvidenceForm?) async throws -> Session {
        let algorithm: TEEKey.Algorithm = candidate == .legacy ? .rsa1_5 : currentKeyAlgorithm
        let key: TEEKey
        if let existing = keys[algorithm] {
            key = existing
        } else {
            do { key = try TEEKey(algorithm) } catch {
                throw KBSError(.attestation, step: "auth", detail: "cannot generate the TEE key: \(error)")
            }
            keys[algorithm] = key
        }
        jar.removeAll()
        let tee = provider.attester.tee
        let (authStatus, authBody) = try await send(.POST, "auth", body: RCAR.request(dialect: candidate, tee: tee), step: "auth")
        guard authStatus == 200 else { throw RCAR.failure(step: "auth", status: authStatus, body: authBody) }
        let challenge = try RCAR.parseChallenge(authBody)
        // The TDX quote (configfs-tsm) and the GPUs' reports (NVML) block for a while: not on the cooperative pool.
        let provider = self.provider
        let (attestation, summary) = try await Blocking.run { () throws(KBSError) in
            try RCAR.attestation(dialect: candidate, challenge: challenge, key: key, provider: provider, gpu: form)
        }
        for missing in summary.missingGPUs {
            logger.warning("GPU left out of the evidence: \(missing)")
        }
        let status: Int
        let body: [UInt8]
        do {
            (status, body) = try await send(.POST, "attest", body: attestation, step: "attest")
        } catch {
            throw KBSHandshakeFailure(error: error, sentDeviceEvidence: summary.gpuForm == .device)
        }
        guard status == 200 else {
            throw KBSHandshakeFailure(error: RCAR.failure(step: "attest", status: status, body: body), sentDeviceEvidence: summary.gpuForm == .device)
        }
        let token = try RCAR.parseToken(body)
        return Session(dialect: candidate, tee: tee, token: token, evidence: summary, key: key)
    }

    /// One request under `kbs/v0/`, with the cookie jar; the body is read up to 1 MiB.
    private func send(_ method: HTTPMethod, _ path: String, body: [UInt8]?, step: String) async throws(KBSError) -> (Int, [UInt8]) {
        var request = HTTPClientRequest(url: "\(base)/kbs/v0/\(path)")
        request.method = method
        request.headers.add(name: "User-Agent", value: Self.userAgent)
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        if let cookie = jar.header(now: now()) { request.headers.add(name: "Cookie", value: cookie) }
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: TimeAmount(retry.requestTimeout))
        } catch let error as NIOSSLError {
            // BoringSSL refused the handshake (an alert, a certificate it cannot verify): trying again cannot help.
            // A connection cut during the handshake is an I/O error, not this, and stays retried.
            guard case .handshakeFailed = error else {
                throw KBSError(.unavailable, step: step, detail: "cannot reach \(base)/kbs/v0/\(path): \(error)")
            }
            throw KBSError(.untrusted, step: step, detail: "\(base)/kbs/v0/\(path): \(error)")
        } catch let error as NIOSSLExtraError where error == .failedToValidateHostname {
            throw KBSError(.untrusted, step: step, detail: "\(base)/kbs/v0/\(path): \(error)")
        } catch {
            throw KBSError(.unavailable, step: step, detail: "cannot reach \(base)/kbs/v0/\(path): \(error)")
        }
        jar.store(setCookie: response.headers["Set-Cookie"], now: now())
        do {
            let bytes = try await response.body.collect(upTo: JWE.maximumSize)
            return (Int(response.status.code), Array(bytes.readableBytesView))
        } catch is NIOTooManyBytesError {
            throw KBSError(.protocolViolation, step: step, status: Int(response.status.code), detail: "the answer is larger than 1 MiB")
        } catch {
            throw KBSError(.unavailable, step: step, status: Int(response.status.code), detail: "the answer was cut off: \(error)")
        }
    }
}

/// An `/attest` failure, and whether it answered device GPU evidence (which a server without the `nvidia`
/// verifier cannot take).
private struct KBSHandshakeFailure: Error {
    var error: KBSError
    var sentDeviceEvidence: Bool
}

extension KBSClient {
    /// Which dialect to speak (`CAID_KBS_PROTOCOL`): one of them, or `auto`, which tries 0.4.0 and falls back to
    /// 0.1.0 on a version mismatch, and remembers what the server took.
    public enum DialectChoice: Sendable, Equatable, CaseIterable {
        case auto
        /// openanolis Trustee up to 1.5.2.
        case legacy
        /// upstream Trustee ≥ 0.14, openanolis ≥ 1.6.
        case current
    }

    /// Which form of NVIDIA GPU evidence goes to Trustee (`CAID_GPU_EVIDENCE`).
    public enum GPUEvidenceChoice: Sendable, Equatable {
        /// The device form first; the embedded form with a Trustee that has no `nvidia` verifier. Remembered.
        case auto
        /// 0.4.0 additional evidence `{"nvidia": …}`, verified by upstream Trustee's `nvidia` verifier.
        case device
        /// `gpu_evidence` inside the TDX evidence, verified by openanolis Trustee's TDX verifier.
        case embedded
        /// No GPU evidence, even when NVML finds GPUs.
        case off
    }
}
