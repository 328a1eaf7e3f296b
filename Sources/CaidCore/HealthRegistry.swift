import Foundation

/// The one place every service publishes its state to; the health socket, sd_notify and metrics read it.
public actor HealthRegistry {
    private var services: [String: ServiceStatus] = [:]
    private var order: [String] = []
    private var shuttingDown = false
    private var subscribers: [UUID: AsyncStream<HealthSnapshot>.Continuation] = [:]
    /// Time on the registry's clock since it was made.
    private let elapsed: @Sendable () -> Duration
    private var lastTick = Duration.zero
    private var progressCount = 0
    private var startNote: String?

    /// - Parameter clock: what ``sinceLastTick()`` measures with; tests pass one they move themselves.
    public init<C: Clock<Duration>>(clock: C = ContinuousClock()) {
        let start = clock.now
        elapsed = { start.duration(to: clock.now) }
    }

    /// Adds a service in state `waiting`. Registering a name twice keeps the first.
    public func register(_ name: String, required: Bool) {
        guard services[name] == nil else { return }
        services[name] = ServiceStatus(name: name, required: required)
        order.append(name)
        publish()
    }

    /// Moves a service to `state`, optionally with a detail and an error text.
    /// - Parameter restarted: counts one more restart in the same change, so readers never see one without the other.
    public func set(_ name: String, _ state: ServiceState, detail: String? = nil, error: String? = nil, restarted: Bool = false) {
        guard var status = services[name] else { return }
        if restarted { status.restarts += 1 }
        if status.state != state { status.since = Date() }
        status.state = state
        status.detail = detail
        if let error { status.lastError = error }
        services[name] = status
        publish()
    }

    /// Changes only what a service is doing, keeping its state; counts as progress (``progressMarks()``), as
    /// bytes arriving in the fetch do, unless `progress` is false (a retry is not progress).
    public func setDetail(_ name: String, _ detail: String?, progress: Bool = true) {
        guard services[name] != nil, services[name]?.detail != detail else { return }
        services[name]?.detail = detail
        if progress { progressCount += 1 }
        publish()
    }

    /// Sets or clears what a streaming mount's download has brought so far.
    public func setStreaming(_ name: String, _ streaming: StreamingStatus?) {
        guard services[name] != nil, services[name]?.streaming != streaming else { return }
        services[name]?.streaming = streaming
        publish()
    }

    /// How many times a service has reported progress with ``setDetail(_:_:)``; grows while work moves on.
    public func progressMarks() -> Int { progressCount }

    /// A note on the start as a whole, shown first in the summary (STATUS= and `caid health`), such as why
    /// systemd's start timeout is no longer extended; nil to clear it.
    public func setStartNote(_ note: String?) {
        guard startNote != note else { return }
        startNote = note
        publish()
    }

    /// Marks the daemon as shutting down: it is no longer ready.
    public func beginShutdown() {
        shuttingDown = true
        publish()
    }

    /// The status of one service.
    public func status(of name: String) -> ServiceStatus? { services[name] }

    /// Everything, in registration order.
    public func snapshot() -> HealthSnapshot {
        let list = order.compactMap { services[$0] }
        let ready = !shuttingDown && list.allSatisfy { !$0.required || $0.state == .running }
        let state = shuttingDown ? "stopping" : (ready ? "ready" : "starting")
        var summary = Self.summary(list, state: state)
        if let startNote, !ready, !shuttingDown { summary = "\(state) (\(startNote))" + summary.dropFirst(state.count) }
        return HealthSnapshot(state: state, ready: ready, services: list, summary: summary)
    }

    /// A stream of snapshots: the current one at once, then one after every change.
    public func updates() -> AsyncStream<HealthSnapshot> {
        let (stream, continuation) = AsyncStream.makeStream(of: HealthSnapshot.self, bufferingPolicy: .bufferingNewest(1))
        subscribers[UUID()] = continuation
        continuation.yield(snapshot())
        return stream
    }

    /// Called by the supervisor's loop to show it is alive; read by the watchdog.
    public func tick() { lastTick = elapsed() }

    /// How long ago the supervisor's loop last ticked.
    public func sinceLastTick() -> Duration { elapsed() - lastTick }

    /// Waits until every service in `names` runs. Returns early, quietly, when the task is cancelled.
    public func waitUntilRunning(_ names: [String]) async {
        if names.allSatisfy({ services[$0]?.state == .running }) { return }
        for await snapshot in updates() {
            let running = Set(snapshot.services.filter { $0.state == .running }.map(\.name))
            if names.allSatisfy(running.contains) { return }
        }
    }

    private func publish() {
        let current = snapshot()
        // Streams whose reader has gone are dropped here, on the next change.
        for (id, continuation) in subscribers {
            if case .terminated = continuation.yield(current) { subscribers[id] = nil }
        }
    }

    static func summary(_ list: [ServiceStatus], state: String) -> String {
        if list.isEmpty { return "\(state): no services" }
        let waiting = list.filter { $0.state != .running }
        if waiting.isEmpty { return "\(state): " + list.map(\.name).joined(separator: ", ") + " running" }
        return "\(state): " + waiting.map { status in
            var part = "\(status.name) \(status.state.rawValue)"
            if let detail = status.detail { part += " (\(detail))" }
            return part
        }.joined(separator: "; ")
    }
}
