import CaidCore
import Logging
import ServiceLifecycle

/// Tells systemd how caid is doing: `STATUS=` as stages progress, `READY=1` once every required service runs,
/// `WATCHDOG=1` at half the watchdog timeout while the supervisor's loop is responsive, `STOPPING=1` on shutdown.
///
/// The watchdog is fed only while the supervisor keeps ticking the registry: a wedged supervisor (or a starved
/// runtime) stops the pets and systemd restarts caid.
public struct NotifierService: Service {
    private let registry: HealthRegistry
    private let notifier: SystemdNotifier
    private let logger: Logger
    private let stallThreshold: Duration

    /// - Parameter stallThreshold: the supervisor counts as wedged when it has not ticked for this long.
    public init(registry: HealthRegistry, notifier: SystemdNotifier = SystemdNotifier(), logger: Logger,
                stallThreshold: Duration = .seconds(5)) {
        self.registry = registry
        self.notifier = notifier
        self.logger = logger
        self.stallThreshold = stallThreshold
    }

    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.reportStatus() }
            if let timeout = notifier.watchdogTimeout() {
                logger.info("systemd watchdog on, timeout \(timeout.formatted)")
                group.addTask { await self.feedWatchdog(every: timeout / 2) }
            }
            // Returns on graceful shutdown, or throws on cancellation: either way caid is stopping.
            try? await gracefulShutdown()
            notifier.send("STOPPING=1\nSTATUS=stopping")
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
            if !message.isEmpty { notifier.send(message) }
        }
    }

    private func feedWatchdog(every interval: Duration) async {
        while !Task.isCancelled {
            let silence = await registry.sinceLastTick()
            if silence < stallThreshold {
                notifier.send("WATCHDOG=1")
            } else {
                logger.error("supervisor has not ticked for \(silence.formatted); not feeding the watchdog")
            }
            try? await Task.sleep(for: interval)
        }
    }
}
