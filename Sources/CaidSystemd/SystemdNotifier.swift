import CSystemd

/// The systemd notification protocol (`sd_notify(3)`): READY, STATUS, WATCHDOG and STOPPING messages to the socket
/// named by `NOTIFY_SOCKET`. Does nothing when caid was not started by systemd.
public struct SystemdNotifier: Sendable {
    public init() {}

    /// Sends one message, such as `READY=1\nSTATUS=mounting`.
    /// - Returns: `true` when it was sent, `false` when there is no notification socket or sending failed.
    @discardableResult
    public func send(_ message: String) -> Bool {
        sd_notify(0, message) > 0
    }

    /// The interval at which systemd expects `WATCHDOG=1`, from `WATCHDOG_USEC`; `nil` when the watchdog is off.
    public func watchdogTimeout() -> Duration? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return .microseconds(Int64(clamping: usec))
    }
}
