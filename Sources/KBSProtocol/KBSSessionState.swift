import Foundation

/// The life of one KBS session, without I/O: whether a caller may use the established session, must start the
/// handshake, or waits for the one already running. ``KBSClient`` drives it and performs the actions.
///
/// One handshake runs at a time: a second one would clear the first one's cookies between its `/auth` and
/// `/attest`. Callers that arrive while it runs wait and share its outcome.
package struct KBSSessionState<Session: Sendable>: Sendable {
    /// How long before the token or the session cookie runs out a session is no longer handed out, so that a
    /// request does not reach the KBS with a cookie that expires on the way.
    package static var margin: TimeInterval { 30 }

    /// A session that may be used, and which handshake made it (so that a late 401 on an old session does not drop
    /// a newer one).
    package struct Established: Sendable {
        package var session: Session
        package var generation: Int
        /// The earlier of the token's `exp` and the `kbs-session-id` cookie's expiry.
        package var validUntil: Date
    }

    package enum State: Sendable {
        case idle
        /// A handshake runs; these callers wait for it.
        case authenticating(waiters: [Int])
        case established(Established)
    }

    package enum AcquireAction: Sendable {
        case use(Established)
        /// The caller runs the handshake and reports back with ``handshakeSucceeded`` or ``handshakeFailed``.
        case startHandshake
        /// The caller suspends until a ``Completion`` names it.
        case wait
    }

    /// What to do with the waiters when a handshake ends.
    package struct Completion: Sendable {
        package var waiters: [Int]
        package var established: Established?
    }

    package private(set) var state: State = .idle
    private var generation = 0

    package init() {}

    /// The established session, if it is still valid at `now`.
    package func current(now: Date) -> Established? {
        guard case .established(let established) = state, established.validUntil.timeIntervalSince(now) > Self.margin else { return nil }
        return established
    }

    /// A caller (`waiter` is its id, unique while it waits) needs a session.
    package mutating func acquire(waiter: Int, now: Date) -> AcquireAction {
        switch state {
        case .idle:
            state = .authenticating(waiters: [])
            return .startHandshake
        case .authenticating(var waiters):
            waiters.append(waiter)
            state = .authenticating(waiters: waiters)
            return .wait
        case .established(let established):
            if established.validUntil.timeIntervalSince(now) > Self.margin { return .use(established) }
            state = .authenticating(waiters: [])
            return .startHandshake
        }
    }

    /// The handshake established `session`, valid until the earlier of `tokenExpires` and `cookieExpires`.
    package mutating func handshakeSucceeded(_ session: Session, tokenExpires: Date?, cookieExpires: Date?, now: Date) -> Completion {
        generation += 1
        // A token without `exp` or a cookie without `Expires` is not trusted beyond Trustee's default session timeout.
        let fallback = now.addingTimeInterval(Self.defaultSessionLifetime)
        let until = min(tokenExpires ?? fallback, cookieExpires ?? fallback)
        let established = Established(session: session, generation: generation, validUntil: until)
        let waiters = takeWaiters()
        state = .established(established)
        return Completion(waiters: waiters, established: established)
    }

    /// The handshake failed: every waiter gets its error and the next caller starts afresh.
    package mutating func handshakeFailed() -> Completion {
        let waiters = takeWaiters()
        state = .idle
        return Completion(waiters: waiters, established: nil)
    }

    /// The KBS refused the session of `generation` (a 401), or the caller wants a fresh attestation: it is not
    /// handed out again. A running handshake and a newer session are left alone.
    package mutating func invalidate(generation dropped: Int? = nil) {
        guard case .established(let established) = state else { return }
        if let dropped, dropped != established.generation { return }
        state = .idle
    }

    /// A waiting caller was cancelled. - Returns: whether it was still waiting.
    package mutating func cancel(waiter: Int) -> Bool {
        guard case .authenticating(var waiters) = state, let index = waiters.firstIndex(of: waiter) else { return false }
        waiters.remove(at: index)
        state = .authenticating(waiters: waiters)
        return true
    }

    private mutating func takeWaiters() -> [Int] {
        if case .authenticating(let waiters) = state { return waiters }
        return []
    }

    /// Trustee's `kbs-session-id` lifetime by default, five minutes (confidential-containers/trustee
    /// `kbs/src/config.rs` `DEFAULT_TIMEOUT`, v0.15.0–v0.17.0; openanolis/trustee the same, v1.5.2–v1.9.0).
    package static var defaultSessionLifetime: TimeInterval { 300 }
}
