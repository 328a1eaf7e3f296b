/// When to start a failed service again: exponential backoff with jitter, capped, reset after a healthy run.
///
/// A pure value: the supervisor feeds it failures and how long the attempt ran, and it answers with the delay.
public struct RestartPolicy: Sendable, Equatable {
    /// The delay after the first failure.
    public var baseDelay: Duration
    /// The longest delay between two attempts.
    public var maxDelay: Duration
    /// An attempt that ran at least this long counts as healthy: the next failure starts the backoff afresh.
    public var resetAfter: Duration

    public init(baseDelay: Duration = .milliseconds(500), maxDelay: Duration = .seconds(60), resetAfter: Duration = .seconds(120)) {
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.resetAfter = resetAfter
    }

    /// The backoff state of one service.
    public struct Backoff: Sendable, Equatable {
        /// Consecutive failures since the last healthy run.
        public private(set) var failures = 0

        public init() {}

        /// Records a failure after an attempt that ran for `ranFor`, and returns how long to wait.
        /// - Parameter random: a number in `0..<1`; half of the delay is fixed, the other half scaled by it
        ///   ("equal jitter"), so services that failed together do not come back together.
        public mutating func failed(after ranFor: Duration, policy: RestartPolicy, random: Double) -> Duration {
            if ranFor >= policy.resetAfter { failures = 0 }
            failures += 1
            let exponent = min(failures - 1, 30)
            var delay = policy.baseDelay * (1 << exponent)
            if delay > policy.maxDelay || delay < .zero { delay = policy.maxDelay }
            let clamped = min(max(random, 0), 1)
            return delay / 2 + (delay / 2) * clamped
        }
    }
}
