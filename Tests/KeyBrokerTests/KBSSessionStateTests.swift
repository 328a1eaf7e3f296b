import Foundation
@testable import KBSProtocol
import Testing

@testable import KeyBroker

/// The KBS session's state machine, without sockets: one handshake at a time, waiters share it, and a session is
/// handed out only while both its token and its cookie are valid.
struct KBSSessionStateTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func oneHandshakeAtATimeAndWaitersShareIt() {
        var state = KBSSessionState<String>()
        guard case .startHandshake = state.acquire(waiter: 1, now: now) else { Issue.record("first caller must start"); return }
        // Two more callers while the handshake runs: they wait instead of starting a second one (which would clear
        // the first one's cookies between its /auth and /attest).
        guard case .wait = state.acquire(waiter: 2, now: now), case .wait = state.acquire(waiter: 3, now: now) else {
            Issue.record("callers during a handshake must wait"); return
        }
        let completion = state.handshakeSucceeded("s1", tokenExpires: now + 300, cookieExpires: now + 300, now: now)
        #expect(completion.waiters == [2, 3])
        #expect(completion.established?.session == "s1")
        guard case .use(let established) = state.acquire(waiter: 4, now: now + 10) else { Issue.record("must reuse"); return }
        #expect(established.session == "s1")
        #expect(established.generation == completion.established?.generation)
    }

    @Test func aFailedHandshakeWakesEveryWaiterAndTheNextCallerStartsAfresh() {
        var state = KBSSessionState<String>()
        _ = state.acquire(waiter: 1, now: now)
        _ = state.acquire(waiter: 2, now: now)
        let completion = state.handshakeFailed()
        #expect(completion.waiters == [2])
        #expect(completion.established == nil)
        guard case .startHandshake = state.acquire(waiter: 3, now: now) else { Issue.record("must start again"); return }
    }

    /// Trustee's cookie lives five minutes from /auth; the token may live longer. The earlier one bounds reuse.
    @Test func theCookieBoundsReuseWhenTheTokenOutlivesIt() {
        var state = KBSSessionState<String>()
        _ = state.acquire(waiter: 1, now: now)
        let completion = state.handshakeSucceeded("s1", tokenExpires: now + 3600, cookieExpires: now + 300, now: now)
        #expect(completion.established?.validUntil == now + 300)
        guard case .use = state.acquire(waiter: 2, now: now + 200) else { Issue.record("still valid at 200 s"); return }
        // Within the margin of the cookie's expiry: a fresh handshake, not a request with a dying cookie.
        guard case .startHandshake = state.acquire(waiter: 3, now: now + 280) else { Issue.record("must re-attest near cookie expiry"); return }
    }

    @Test func theTokenBoundsReuseWhenTheCookieOutlivesIt() {
        var state = KBSSessionState<String>()
        _ = state.acquire(waiter: 1, now: now)
        _ = state.handshakeSucceeded("s1", tokenExpires: now + 100, cookieExpires: now + 300, now: now)
        guard case .startHandshake = state.acquire(waiter: 2, now: now + 75) else { Issue.record("must re-attest near token expiry"); return }
    }

    @Test func withoutExpiriesTrusteesDefaultSessionLifetimeApplies() {
        var state = KBSSessionState<String>()
        _ = state.acquire(waiter: 1, now: now)
        let completion = state.handshakeSucceeded("s1", tokenExpires: nil, cookieExpires: nil, now: now)
        #expect(completion.established?.validUntil == now + 300)
    }

    /// A 401 on an old session must not drop the newer one another caller already established.
    @Test func invalidationNamesTheGenerationItRefused() {
        var state = KBSSessionState<String>()
        _ = state.acquire(waiter: 1, now: now)
        let first = state.handshakeSucceeded("s1", tokenExpires: now + 300, cookieExpires: now + 300, now: now).established
        state.invalidate(generation: first?.generation)
        _ = state.acquire(waiter: 2, now: now)
        let second = state.handshakeSucceeded("s2", tokenExpires: now + 300, cookieExpires: now + 300, now: now).established
        state.invalidate(generation: first?.generation)
        guard case .use(let kept) = state.acquire(waiter: 3, now: now) else { Issue.record("the newer session must stay"); return }
        #expect(kept.session == "s2")
        #expect(kept.generation == second?.generation)
        state.invalidate()
        guard case .startHandshake = state.acquire(waiter: 4, now: now) else { Issue.record("reattest drops it"); return }
    }

    @Test func aCancelledWaiterIsNotWokenLater() {
        var state = KBSSessionState<String>()
        _ = state.acquire(waiter: 1, now: now)
        _ = state.acquire(waiter: 2, now: now)
        _ = state.acquire(waiter: 3, now: now)
        let first = state.cancel(waiter: 2)
        let again = state.cancel(waiter: 2)
        #expect(first)
        #expect(!again)
        let completion = state.handshakeSucceeded("s", tokenExpires: now + 300, cookieExpires: nil, now: now)
        #expect(completion.waiters == [3])
    }
}
