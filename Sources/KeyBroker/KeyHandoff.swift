import CaidBase
import Synchronization

/// Passes the model password from the `key` service to the mount, and keeps it no longer than that.
///
/// The key service ``offer(_:)``s the password; the mount ``take()``s it, which removes it from here (the mount
/// wipes its copy once the volume is unlocked). If the mount asks again later (it restarted), the key service sees
/// the demand (``waitForDemand()``) and fetches the password again from the KBS, so it is not kept in between.
///
/// A lock rather than an actor, so that a cancelled ``take()`` is resolved synchronously in its cancellation handler.
public final class KeyHandoff: Sendable {
    private struct State: ~Copyable {
        var secret: Secret?
        var takers: [Int: CheckedContinuation<Secret, any Error>] = [:]
        var watchers: [CheckedContinuation<Void, Never>] = []
        var nextID = 0
    }

    private let state = Mutex(State())

    public init() {}

    /// Hands the password to a waiting mount, or keeps it until the mount asks. A password kept from before is wiped.
    public func offer(_ password: Secret) {
        let taker = state.withLock { state -> CheckedContinuation<Secret, any Error>? in
            if let id = state.takers.keys.min() {
                return state.takers.removeValue(forKey: id)
            }
            state.secret?.wipe()
            state.secret = password
            return nil
        }
        taker?.resume(returning: password)
    }

    /// The password, waiting until the key service has one. The caller owns it and must wipe it.
    public func take() async throws -> Secret {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Secret, any Error>) in
                let (ready, watchers) = state.withLock { state -> (Result<Secret, any Error>?, [CheckedContinuation<Void, Never>]) in
                    if Task.isCancelled { return (.failure(CancellationError()), []) }
                    if let secret = state.secret {
                        state.secret = nil
                        return (.success(secret), [])
                    }
                    state.takers[id] = continuation
                    defer { state.watchers = [] }
                    return (nil, state.watchers)
                }
                if let ready { continuation.resume(with: ready) }
                watchers.forEach { $0.resume() }
            }
        } onCancel: {
            state.withLock { $0.takers.removeValue(forKey: id) }?.resume(throwing: CancellationError())
        }
    }

    /// Returns once someone waits in ``take()`` while no password is here: the moment the key service must fetch
    /// it (again). Returns at once when cancelled.
    public func waitForDemand() async {
        while !Task.isCancelled {
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let ready = state.withLock { state -> Bool in
                        if state.secret == nil && !state.takers.isEmpty { return true }
                        state.watchers.append(continuation)
                        return false
                    }
                    if ready { continuation.resume() }
                }
            } onCancel: {
                state.withLock { state in
                    defer { state.watchers = [] }
                    return state.watchers
                }.forEach { $0.resume() }
            }
            if state.withLock({ $0.secret == nil && !$0.takers.isEmpty }) { return }
        }
    }

    /// True while a password is held here, not yet taken.
    public var isHolding: Bool { state.withLock { $0.secret != nil } }

    /// Wipes a password not yet taken. Called when the key service stops; a waiting mount keeps waiting for the
    /// next one.
    public func wipe() {
        state.withLock { state in
            state.secret?.wipe()
            state.secret = nil
        }
    }
}
