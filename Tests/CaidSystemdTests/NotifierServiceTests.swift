import CaidCore
import CaidSystemd
import CaidTestSupport
import Logging
import ServiceLifecycle
import Synchronization
import Testing

@Suite struct NotifierServiceTests {
    final class Messages: Sendable {
        private let list = Mutex<[String]>([])
        func append(_ message: String) { list.withLock { $0.append(message) } }
        var all: [String] { list.withLock { $0 } }
        func count(_ fragment: String) -> Int { all.filter { $0.contains(fragment) }.count }
    }

    let logger = quietLogger

    @Test func readyStatusWatchdogAndStopping() async throws {
        let registry = HealthRegistry()
        await registry.register("mount", required: true)
        let messages = Messages()
        let notifier = NotifierService(
            registry: registry, logger: logger, send: { messages.append($0) }, watchdogTimeout: .milliseconds(100),
            stallThreshold: .milliseconds(150), startExtension: .seconds(3))
        try await withRunningServices([notifier]) {
            // The supervisor ticks: the watchdog is fed and the start timeout extended.
            let ticker = Task {
                while !Task.isCancelled {
                    await registry.tick()
                    try? await Task.sleep(for: .milliseconds(20))
                }
            }
            try await Task.sleep(for: .milliseconds(300))
            #expect(messages.count("WATCHDOG=1") >= 3)
            #expect(messages.count("EXTEND_TIMEOUT_USEC=3000000") >= 3)
            #expect(messages.count("READY=1") == 0)
            #expect(messages.all.first { $0.contains("STATUS=") } == "STATUS=starting: mount waiting")

            await registry.set("mount", .running)
            try await Task.sleep(for: .milliseconds(200))
            #expect(messages.all.contains("READY=1\nSTATUS=ready: mount running"))
            let extensionsAtReady = messages.count("EXTEND_TIMEOUT_USEC")

            // The supervisor stops ticking: no more watchdog pets.
            ticker.cancel()
            try await Task.sleep(for: .milliseconds(250))
            let pets = messages.count("WATCHDOG=1")
            try await Task.sleep(for: .milliseconds(300))
            #expect(messages.count("WATCHDOG=1") == pets)
            #expect(messages.count("EXTEND_TIMEOUT_USEC") == extensionsAtReady)
        }
        #expect(messages.all.last == "STOPPING=1\nSTATUS=stopping")
        #expect(messages.count("READY=1") == 1)
    }

    /// Trustee unreachable: attestation keeps failing, nothing else moves. The start timeout is extended for the
    /// window and then not any more, and STATUS= says what the start waits on; progress brings the extensions back.
    @Test func aStartWithoutProgressStopsExtendingAndSaysWhy() async throws {
        let registry = HealthRegistry()
        await registry.register("attestation", required: true)
        await registry.register("fetch", required: true)
        let messages = Messages()
        let notifier = NotifierService(
            registry: registry, logger: logger, send: { messages.append($0) }, watchdogTimeout: .milliseconds(60),
            stallThreshold: .milliseconds(500), startExtension: .milliseconds(300), progressWindow: .milliseconds(250))
        try await withRunningServices([notifier]) {
            let ticker = Task {
                while !Task.isCancelled {
                    await registry.tick()
                    try? await Task.sleep(for: .milliseconds(20))
                }
            }
            defer { ticker.cancel() }
            await registry.set("attestation", .backoff, detail: "retrying in 5s", error: "cannot reach Trustee at http://10.0.0.1:8080")
            try await Task.sleep(for: .milliseconds(150))
            #expect(messages.count("EXTEND_TIMEOUT_USEC=300000") >= 1)
            try await Task.sleep(for: .milliseconds(350))
            let extensions = messages.count("EXTEND_TIMEOUT_USEC")
            try await Task.sleep(for: .milliseconds(300))
            #expect(messages.count("EXTEND_TIMEOUT_USEC") == extensions, "\(messages.all)")
            #expect(messages.count("WATCHDOG=1") >= 8, "the watchdog is still fed: caid is alive, only the start is stuck")
            let status = await registry.snapshot().summary
            #expect(status.hasPrefix("starting (no progress for "), "\(status)")
            #expect(status.contains("waiting on attestation: cannot reach Trustee at http://10.0.0.1:8080"), "\(status)")
            #expect(messages.all.contains { $0.contains("STATUS=starting (no progress for ") })

            // Bytes arrive: the start moves again.
            await registry.setDetail("fetch", "1 MiB of 10 MiB (10%)")
            try await Task.sleep(for: .milliseconds(150))
            #expect(messages.count("EXTEND_TIMEOUT_USEC") > extensions)
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
