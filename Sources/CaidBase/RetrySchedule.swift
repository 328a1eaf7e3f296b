/// How a client tries a request again: how many attempts, and the wait before each next one (doubling from
/// `firstDelay` up to `maximumDelay`, with AWS's "full jitter" when asked). Pure: the loops that wait live with
/// their clients, which decide which errors are worth another attempt.
public struct RetrySchedule: Sendable, Equatable {
    public enum Jitter: Sendable, Equatable {
        /// The computed wait exactly.
        case none
        /// A uniformly random wait between zero and the computed one, so that many clients failing together do not
        /// come back together.
        case full
    }

    public var attempts: Int
    public var firstDelay: Duration
    public var maximumDelay: Duration
    public var jitter: Jitter

    public init(attempts: Int, firstDelay: Duration, maximumDelay: Duration, jitter: Jitter) {
        self.attempts = attempts
        self.firstDelay = firstDelay
        self.maximumDelay = maximumDelay
        self.jitter = jitter
    }

    /// The wait after failed attempt `attempt` (from 1), or nil when that was the last one. `random` is in [0, 1).
    public func delay(after attempt: Int, random: Double) -> Duration? {
        guard attempt < attempts else { return nil }
        var wait = firstDelay
        for _ in 1..<max(1, attempt) where wait < maximumDelay { wait *= 2 }
        wait = min(wait, maximumDelay)
        return jitter == .full ? wait * min(max(random, 0), 1) : wait
    }
}
