import CaidCore
import CaidSystemd
import CaidTestSupport
import Logging
import ServiceLifecycle
import Synchronization
import Testing

@Suite struct NotifierServiceTests {
    /// What the notifier sent, and a way to await a message as it arrives.
    final class Messages: Sendable {
        private struct State {
            var list: [String] = []
            var waiters: [(fragment: String, continuation: CheckedContinuation<Void, Never>)] = []
        }
        private let state = Mutex(State())

        func append(_ message: String) {
            let arrived = state.withLock { state in
                state.list.append(message)
                let arrived = state.waiters.filter { message.contains($0.fragment) }.map(\.continuation)
                state.waiters.removeAll { message.contains($0.fragment) }
                return arrived
            }
            for waiter in arrived { waiter.resume() }
        }

        var all: [String] { state.withLock { $0.list } }
        func count(_ fragment: String) -> Int { all.filter { $0.contains(fragment) }.count }

        /// Returns once a message containing `fragment` was sent (at once if one was).
        func arrival(of fragment: String) async {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let sent = state.withLock { state in
                    if state.list.contains(where: { $0.contains(fragment) }) { return true }
                    state.waiters.append((fragment, continuation))
                    return false
                }
                if sent { continuation.resume() }
            }
        }
    }

    let logger = quietLogger

    /// The notifier's next period: time moves on by `interval` and the notifier has done what it does then
    /// (it is asleep again). With `tick`, the supervisor ticked the registry first.
    static func period(_ clock: ManualClock, _ interval: Duration, registry: HealthRegistry, tick: Bool = true) async {
        if tick { await registry.tick() }
        clock.advance(by: interval)
        await clock.sleepers()
    }

    @Test(.timeLimit(.minutes(1))) func readyStatusWatchdogAndStopping() async throws {
        let clock = ManualClock()
        let registry = HealthRegistry(clock: clock)
        await registry.register("mount", required: true)
        let messages = Messages()
        // Pets at half the watchdog timeout: every 50 ms.
        let interval = Duration.milliseconds(50)
        let notifier = NotifierService(
            registry: registry, logger: logger, send: { messages.append($0) }, watchdogTimeout: .milliseconds(100),
            stallThreshold: .milliseconds(150), startExtension: .seconds(3), clock: clock)
        try await withRunningServices([notifier]) {
            // The supervisor ticks: the watchdog is fed and the start timeout extended, once a period.
            await clock.sleepers()
            for _ in 0..<3 { await Self.period(clock, interval, registry: registry) }
            #expect(messages.count("WATCHDOG=1") == 4)
            #expect(messages.count("EXTEND_TIMEOUT_USEC=3000000") == 4)
            #expect(messages.count("READY=1") == 0)
            await messages.arrival(of: "STATUS=")
            #expect(messages.all.first { $0.contains("STATUS=") } == "STATUS=starting: mount waiting")

            await registry.set("mount", .running)
            await messages.arrival(of: "READY=1")
            #expect(messages.all.contains("READY=1\nSTATUS=ready: mount running"))
            await Self.period(clock, interval, registry: registry)
            #expect(messages.count("WATCHDOG=1") == 5)
            // Ready: the start timeout is not extended any more.
            let extensionsAtReady = messages.count("EXTEND_TIMEOUT_USEC")
            #expect(extensionsAtReady == 4)

            // The supervisor stops ticking (last at 150 ms): a pet while it has been quiet less than 150 ms (at
            // 250 ms), then none.
            await Self.period(clock, interval, registry: registry, tick: false)
            #expect(messages.count("WATCHDOG=1") == 6)
            for _ in 0..<6 { await Self.period(clock, interval, registry: registry, tick: false) }
            #expect(messages.count("WATCHDOG=1") == 6)
            #expect(messages.count("EXTEND_TIMEOUT_USEC") == extensionsAtReady)
            // It ticks again: so do the pets.
            await Self.period(clock, interval, registry: registry)
            #expect(messages.count("WATCHDOG=1") == 7)
        }
        #expect(messages.all.last == "STOPPING=1\nSTATUS=stopping")
        #expect(messages.count("READY=1") == 1)
    }

    /// Trustee unreachable: attestation keeps failing, nothing else moves. The start timeout is extended for the
    /// window and then not any more, and STATUS= says what the start waits on; progress brings the extensions back.
    @Test(.timeLimit(.minutes(1))) func aStartWithoutProgressStopsExtendingAndSaysWhy() async throws {
        let clock = ManualClock()
        let registry = HealthRegistry(clock: clock)
        await registry.register("attestation", required: true)
        await registry.register("fetch", required: true)
        let messages = Messages()
        // Every 30 ms: half the watchdog timeout.
        let interval = Duration.milliseconds(30)
        let notifier = NotifierService(
            registry: registry, logger: logger, send: { messages.append($0) }, watchdogTimeout: .milliseconds(60),
            stallThreshold: .milliseconds(500), startExtension: .milliseconds(300), progressWindow: .milliseconds(250),
            clock: clock)
        try await withRunningServices([notifier]) {
            await clock.sleepers()
            await registry.set("attestation", .backoff, detail: "retrying in 5s", error: "cannot reach Trustee at http://10.0.0.1:8080")
            await Self.period(clock, interval, registry: registry)
            #expect(messages.count("EXTEND_TIMEOUT_USEC=300000") == 2)
            // Extended while less than the 250 ms window has passed without progress: at 0, 30, ... 240 ms.
            for _ in 0..<9 { await Self.period(clock, interval, registry: registry) }
            let extensions = messages.count("EXTEND_TIMEOUT_USEC")
            #expect(extensions == 9, "\(messages.all)")
            for _ in 0..<10 { await Self.period(clock, interval, registry: registry) }
            #expect(messages.count("EXTEND_TIMEOUT_USEC") == extensions, "\(messages.all)")
            #expect(messages.count("WATCHDOG=1") == 21, "the watchdog is still fed: caid is alive, only the start is stuck")
            let status = await registry.snapshot().summary
            #expect(status.hasPrefix("starting (no progress for "), "\(status)")
            #expect(status.contains("waiting on attestation: cannot reach Trustee at http://10.0.0.1:8080"), "\(status)")
            await messages.arrival(of: "STATUS=starting (no progress for ")

            // Bytes arrive: the start moves again.
            await registry.setDetail("fetch", "1 MiB of 10 MiB (10%)")
            await Self.period(clock, interval, registry: registry)
            #expect(messages.count("EXTEND_TIMEOUT_USEC") == extensions + 1)
            let after = await registry.snapshot().summary
            #expect(!after.contains("no progress"), "\(after)")
        }
    }

    @Test func startBoundCountsFirstRunsAndProgressMarksOnly() {
        let start = ContinuousClock.now
        var bound = StartBound(window: .seconds(30), now: start)
        func snapshot(_ states: [(String, ServiceState)], ready: Bool = false) -> HealthSnapshot {
            var list: [ServiceStatus] = []
            for (name, state) in states {
                var status = ServiceStatus(name: name, required: true)
                status.state = state
                list.append(status)
            }
            return HealthSnapshot(state: ready ? "ready" : "starting", ready: ready, services: list, summary: "")
        }
        let waiting = snapshot([("attestation", .backoff), ("fetch", .starting)])
        #expect(bound.decide(waiting, progressMarks: 0, now: start + .seconds(29)) == .extend)
        #expect(bound.decide(waiting, progressMarks: 0, now: start + .seconds(31)) == .hold(stalledFor: .seconds(31)))
        // Bytes arriving in the fetch.
        #expect(bound.decide(waiting, progressMarks: 3, now: start + .seconds(40)) == .extend)
        #expect(bound.decide(waiting, progressMarks: 3, now: start + .seconds(71)) == .hold(stalledFor: .seconds(31)))
        // A service running for the first time.
        let attested = snapshot([("attestation", .running), ("fetch", .starting)])
        #expect(bound.decide(attested, progressMarks: 3, now: start + .seconds(80)) == .extend)
        // Failing and running again is not progress: a service that flaps must not hold the start open.
        #expect(bound.decide(waiting, progressMarks: 3, now: start + .seconds(100)) == .extend)
        #expect(bound.decide(attested, progressMarks: 3, now: start + .seconds(111)) == .hold(stalledFor: .seconds(31)))
        #expect(bound.decide(snapshot([("attestation", .running), ("fetch", .running)], ready: true), progressMarks: 3, now: start + .seconds(200)) == .ready)
    }

    @Test func stallNoteNamesTheStuckServiceNotThoseWaitingForIt() {
        var attestation = ServiceStatus(name: "attestation", required: true)
        attestation.state = .backoff
        attestation.lastError = "Trustee at https://trustee:8081 does not answer"
        var key = ServiceStatus(name: "key", required: true)
        key.state = .waiting
        var fetch = ServiceStatus(name: "fetch", required: true)
        fetch.state = .running
        let snapshot = HealthSnapshot(state: "starting", ready: false, services: [attestation, key, fetch], summary: "")
        #expect(StartBound.stallNote(snapshot, stalledFor: .seconds(45)) == "no progress for 45s, so the start timeout is no longer extended; waiting on attestation: Trustee at https://trustee:8081 does not answer")
    }
}
