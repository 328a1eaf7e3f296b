/// At most one event per interval: what progress output goes by, so that a fast loop does not flood a terminal, the
/// journal or the health detail.
public struct Throttle: Sendable {
    public var interval: Duration
    private var last: ContinuousClock.Instant?

    public init(interval: Duration) {
        self.interval = interval
    }

    /// Whether an event at `now` may go out (the first always may); if so, the next must wait an interval from now.
    public mutating func admits(at now: ContinuousClock.Instant = .now) -> Bool {
        if let last, now - last < interval { return false }
        last = now
        return true
    }
}
