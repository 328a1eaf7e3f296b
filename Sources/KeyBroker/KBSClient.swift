import AsyncHTTPClient
import Attestation
import CaidCore
import Foundation
import Logging
import NIOCore
import NIOHTTP1

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

    private let base: String
    private let choice: CaidConfig.KBSProtocol
    private let provider: EvidenceProvider
    private let currentKeyAlgorithm: TEEKey.Algorithm
    private let http: HTTPClient
    private let retry: RetryPolicy
    private let logger: Logger

    private var jar = CookieJar()
    private var dialect: KBSDialect?
    private var key: TEEKey?
    private var session: Session?

    /// - Parameters:
    ///   - trusteeURL: `TRUSTEE_URL`; a trailing `/` is dropped.
    ///   - currentKeyAlgorithm: the TEE key for the 0.4.0 dialect (the legacy one always uses RSA1_5).
    public init(
        trusteeURL: String, protocol choice: CaidConfig.KBSProtocol, provider: EvidenceProvider,
        currentKeyAlgorithm: TEEKey.Algorithm = .ecdhES_A256KW, http: HTTPClient, retry: RetryPolicy = .init(), logger: Logger
    ) {
        var base = trusteeURL
        while base.hasSuffix("/") { base.removeLast() }
        self.base = base
        self.choice = choice
        self.provider = provider
        self.currentKeyAlgorithm = currentKeyAlgorithm
        self.http = http
        self.retry = retry
        self.logger = logger
    }

    /// The current session, attesting first when there is none or its token is about to expire.
    public func attest() async throws(KBSError) -> Session {
        if let session, session.token.isFresh() { return session }
        return try await retrying("attest") { () throws(KBSError) in try await handshake() }
    }

    /// Attests again now, whatever the state of the current session.
    public func reattest() async throws(KBSError) -> Session {
        session = nil
        return try await attest()
    }

    /// The resource at `uri`, decrypted with this session's TEE key.
    public func resource(_ uri: ResourceURI) async throws(KBSError) -> Secret {
        try await retrying("resource \(uri.path)") { () throws(KBSError) in
            if session == nil || session?.token.isFresh() != true { _ = try await handshake() }
            guard let key else { throw KBSError(.protocolViolation, step: "resource", detail: "no TEE key after the handshake") }
            let (status, body) = try await send(.GET, "resource/\(uri.path)", body: nil, step: "resource \(uri.path)")
            guard status == 200 else {
                let error = RCAR.failure(step: "resource \(uri.path)", status: status, body: body)
                if error.kind == .unauthorized { session = nil }
                throw error
            }
            do throws(JWEError) {
                return try JWE(parsing: body).decrypt(with: key)
            } catch {
                throw KBSError(.protocolViolation, step: "resource \(uri.path)", status: status, detail: error.message)
            }
        }
    }

    /// Runs `body` until it succeeds, fails permanently, or the attempts are used up. A 401 drops the session so
    /// that the next attempt starts with a fresh handshake.
    private func retrying<T>(_ step: String, _ body: () async throws(KBSError) -> T) async throws(KBSError) -> T {
        var delay = retry.firstDelay
        var attempt = 1
        while true {
            do {
                return try await body()
            } catch {
                guard error.isTransient, attempt < retry.attempts, !Task.isCancelled else { throw error }
                if error.kind == .unauthorized {
                    session = nil
                    jar.removeAll()
                }
                logger.warning("\(error); attempt \(attempt + 1) of \(retry.attempts) in \(delay)")
                try? await Task.sleep(for: delay)
                delay *= 2
                attempt += 1
            }
        }
    }

    /// One RCAR handshake: `/auth`, evidence, `/attest`. In `auto`, a version mismatch on 0.4.0 falls back to 0.1.0.
    private func handshake() async throws(KBSError) -> Session {
        session = nil
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
                session = established
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

    private func handshake(_ candidate: KBSDialect) async throws(KBSError) -> Session {
        let algorithm: TEEKey.Algorithm = candidate == .legacy ? .rsa1_5 : currentKeyAlgorithm
        if key?.algorithm != algorithm {
            do { key = try TEEKey(algorithm) } catch {
                throw KBSError(.attestation, step: "auth", detail: "cannot generate the TEE key: \(error)")
            }
        }
        guard let key else { throw KBSError(.attestation, step: "auth", detail: "no TEE key") }
        jar.removeAll()
        let tee = provider.attester.tee
        let (authStatus, authBody) = try await send(.POST, "auth", body: RCAR.request(dialect: candidate, tee: tee), step: "auth")
        guard authStatus == 200 else { throw RCAR.failure(step: "auth", status: authStatus, body: authBody) }
        let challenge = try RCAR.parseChallenge(authBody)
        let attestation = try RCAR.attestation(dialect: candidate, challenge: challenge, key: key, provider: provider)
        let (status, body) = try await send(.POST, "attest", body: attestation, step: "attest")
        guard status == 200 else { throw RCAR.failure(step: "attest", status: status, body: body) }
        let token = try RCAR.parseToken(body)
        return Session(dialect: candidate, tee: tee, token: token)
    }

    /// One request under `kbs/v0/`, with the cookie jar; the body is read up to 1 MiB.
    private func send(_ method: HTTPMethod, _ path: String, body: [UInt8]?, step: String) async throws(KBSError) -> (Int, [UInt8]) {
        var request = HTTPClientRequest(url: "\(base)/kbs/v0/\(path)")
        request.method = method
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        if let cookie = jar.header() { request.headers.add(name: "Cookie", value: cookie) }
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: TimeAmount(retry.requestTimeout))
        } catch {
            throw KBSError(.unavailable, step: step, detail: "cannot reach \(base)/kbs/v0/\(path): \(error)")
        }
        jar.store(setCookie: response.headers["Set-Cookie"])
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
