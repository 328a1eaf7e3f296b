import CaidBase
import CaidCore

/// Decides whether caid may push systemd's start timeout further with `EXTEND_TIMEOUT_USEC=`: only while the
/// start makes progress. Pure, so the decision is testable without systemd or a clock.
///
/// Progress is a service running for the first time in this start (attestation accepted, the key fetched, the
/// mount made, the gateway listening) or a service reporting progress (bytes arriving in the fetch: the registry's
/// ``HealthRegistry/progressMarks()``). A start that waits on something unreachable (Trustee down, so attestation
/// retries forever) makes none, and after `window` without any caid stops extending: then `TimeoutStartSec=` and
/// the unit's restart policy decide, and ``stallNote(_:stalledFor:)`` says in STATUS= and health what it waits on.
public struct StartBound: Sendable {
    public enum Decision: Sendable, Equatable {
        /// Progress within the window: push the timeout.
        case extend
        /// No progress for `stalledFor` (at least the window): let systemd's timeout run.
        case hold(stalledFor: Duration)
        /// Ready: there is no start timeout left to extend.
        case ready
    }

    public let window: Duration
    private var everRunning: Set<String> = []
    private var marks: Int?
    private var lastProgress: ContinuousClock.Instant

    /// - Parameters:
    ///   - window: how long a start may go without progress before extensions stop.
    ///   - now: when the start began; it counts as progress.
    public init(window: Duration, now: ContinuousClock.Instant) {
        self.window = window
        self.lastProgress = now
    }

    /// Takes in the registry's state at `now` and says what to do.
    /// - Parameter progressMarks: ``HealthRegistry/progressMarks()`` at the same moment.
    public mutating func decide(_ snapshot: HealthSnapshot, progressMarks: Int, now: ContinuousClock.Instant) -> Decision {
        if snapshot.ready { return .ready }
        let running = Set(snapshot.services.filter { $0.state == .running }.map(\.name))
        let newlyRunning = !running.isSubset(of: everRunning)
        everRunning.formUnion(running)
        let moved = marks.map { progressMarks != $0 } ?? false
        marks = progressMarks
        if newlyRunning || moved { lastProgress = now }
        let quiet = now - lastProgress
        return quiet < window ? .extend : .hold(stalledFor: quiet)
    }

    /// Why the start does not move, in words for STATUS= and health: what is not running, with its last error.
    public static func stallNote(_ snapshot: HealthSnapshot, stalledFor: Duration) -> String {
        let waiting = snapshot.services.filter { $0.required && $0.state != .running }
        // The services that wait for another are not the cause; those that fail or keep starting are.
        let stuck = waiting.filter { $0.state != .waiting }
        let named = (stuck.isEmpty ? waiting : stuck).map { status in
            status.lastError.map { "\(status.name): \($0)" } ?? "\(status.name) \(status.state.rawValue)"
        }
        return "no progress for \(stalledFor.formatted), so the start timeout is no longer extended; waiting on "
            + (named.isEmpty ? "nothing known" : named.joined(separator: "; "))
    }
}
