import CaidBase
import CaidCore
import Logging
import ServiceLifecycle

/// Tells systemd how caid is doing: `STATUS=` as stages progress, `READY=1` once every required service runs,
/// `WATCHDOG=1` at half the watchdog timeout while the supervisor's loop is responsive, `EXTEND_TIMEOUT_USEC=` while
/// the start makes progress (``StartBound``), `STOPPING=1` on shutdown.
///
/// A start that makes no progress (Trustee unreachable) is not extended, so systemd's `TimeoutStartSec=` ends it
/// and the restart policy applies; STATUS= and health then say what it waits on.
///
/// The watchdog is fed only while the supervisor keeps ticking the registry: a wedged supervisor (or a starved
/// runtime) stops the pets and systemd restarts caid.
public struct NotifierService: Service {
    private let registry: HealthRegistry
    private let send: @Sendable (String) -> Void
    private let watchdogTimeout: Duration?
    private let logger: Logger
    private let stallThreshold: Duration
    private let startExtension: Duration
    private let progressWindow: Duration
    /// Time on the service's clock since it was made, and a sleep on that clock.
    private let elapsed: @Sendable () -> Duration
    private let sleep: @Sendable (Duration) async throws -> Void

    /// - Parameters:
    ///   - send: delivers one notification; by default `sd_notify`.
    ///   - watchdogTimeout: by default from `WATCHDOG_USEC`; `nil` when systemd runs no watchdog.
    ///   - stallThreshold: the supervisor counts as wedged when it has not ticked for this long.
    ///   - startExtension: how far each `EXTEND_TIMEOUT_USEC=` pushes the start timeout while starting.
    ///   - progressWindow: how long a start may go without progress before the extensions stop.
    ///   - clock: what the intervals and the start's progress are timed with; tests pass one they move themselves.
    public init<C: Clock<Duration>>(
        registry: HealthRegistry, logger: Logger,
        send: @escaping @Sendable (String) -> Void = { SystemdNotifier().send($0) },
        watchdogTimeout: Duration? = SystemdNotifier().watchdogTimeout(),
        stallThreshold: Duration = .seconds(5), startExtension: Duration = .seconds(10), progressWindow: Duration = .seconds(15),
        clock: C = ContinuousClock()
    ) {
        self.registry = registry
        self.send = send
        self.watchdogTimeout = watchdogTimeout
        self.logger = logger
        self.stallThreshold = stallThreshold
        self.startExtension = startExtension
        self.progressWindow = progressWindow
        let start = clock.now
        self.elapsed = { start.duration(to: clock.now) }
        self.sleep = { try await clock.sleep(for: $0) }
    }

    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.reportStatus() }
            if let timeout = watchdogTimeout {
                logger.info("systemd watchdog on, timeout \(timeout.formatted)")
            }
            group.addTask { await self.keepAlive() }
            // Returns on graceful shutdown, or throws on cancellation: either way caid is stopping.
            try? await gracefulShutdown()
            send("STOPPING=1\nSTATUS=stopping")
            group.cancelAll()
        }
    }

    private func reportStatus() async {
        var lastStatus = ""
        var announcedReady = false
        for await snapshot in await registry.updates() {
            var message = ""
            if snapshot.summary != lastStatus {
                message += "STATUS=\(snapshot.summary)"
                lastStatus = snapshot.summary
            }
            if snapshot.ready, !announcedReady {
                announcedReady = true
                message = "READY=1\n" + message
                logger.notice("\(snapshot.summary)")
            }
            if !message.isEmpty { send(message) }
        }
    }

    /// Feeds the watchdog while the supervisor ticks, and extends the start timeout while the start makes progress.
    private func keepAlive() async {
        let interval = min(watchdogTimeout.map { $0 / 2 } ?? startExtension / 3, startExtension / 3)
        // StartBound keeps ContinuousClock instants: the clock's time is laid onto one from here.
        let origin = ContinuousClock.now - elapsed()
        var bound = StartBound(window: progressWindow, now: origin + elapsed())
        var starting = true
        var holding = false
        while !Task.isCancelled {
            let silence = await registry.sinceLastTick()
            if silence < stallThreshold {
                var message: [String] = []
                if watchdogTimeout != nil { message.append("WATCHDOG=1") }
                if starting {
                    let snapshot = await registry.snapshot()
                    let marks = await registry.progressMarks()
                    switch bound.decide(snapshot, progressMarks: marks, now: origin + elapsed()) {
                    case .ready:
                        starting = false
                        await registry.setStartNote(nil)
                    case .extend:
                        message.append("EXTEND_TIMEOUT_USEC=\(startExtension.microseconds)")
                        if holding {
                            holding = false
                            logger.notice("the start makes progress again; extending the start timeout")
                            await registry.setStartNote(nil)
                        }
                    case .hold(let stalled):
                        let note = StartBound.stallNote(snapshot, stalledFor: stalled)
                        if !holding {
                            holding = true
                            logger.warning("\(note); systemd's TimeoutStartSec= ends the start unless it moves")
                        }
                        await registry.setStartNote(note)
                    }
                }
                if !message.isEmpty { send(message.joined(separator: "\n")) }
            } else {
                logger.error("supervisor has not ticked for \(silence.formatted); not telling systemd it is alive")
            }
            try? await self.sleep(interval)
        }
    }
}

extension Duration {
    /// Whole microseconds, as systemd's `*_USEC` fields want them.
    var microseconds: Int64 {
        components.seconds * 1_000_000 + components.attoseconds / 1_000_000_000_000
    }
}
