import CaidCore
import CaidTestSupport
import Foundation
import Logging
import ServiceLifecycle
import Testing

@Suite struct SupervisorTests {
    @Test func restartsAFailingServiceWithBackoffUntilItRuns() async throws {
        let log = EventLog()
        let spec = ScriptedService.spec("fetch", script: [.fail(after: .zero), .fail(after: .zero), .run], log: log)
        let registry = HealthRegistry()
        try await withSupervisor([spec], registry: registry) {
            let status = await registry.wait(for: "fetch", toBe: .running)
            #expect(status?.state == .running)
            #expect(status?.restarts == 2)
            #expect(status?.lastError?.contains("attempt 1 failed on purpose") == true)
            #expect(await registry.snapshot().ready)
        }
        #expect(log.all.filter { $0 == "fetch:start" }.count == 3)
    }

    @Test func showsBackoffWithTheReasonWhileWaiting() async throws {
        let log = EventLog()
        let slow = RestartPolicy(baseDelay: .seconds(30), maxDelay: .seconds(60), resetAfter: .seconds(60))
        let spec = ScriptedService.spec("key", script: [.fail(after: .zero)], log: log, restart: slow)
        let registry = HealthRegistry()
        try await withSupervisor([spec], registry: registry) {
            let status = await registry.wait(for: "key", toBe: .backoff)
            #expect(status?.state == .backoff)
            #expect(status?.detail == "retrying in 30s")
            #expect(status?.lastError?.contains("failed on purpose") == true)
            #expect(await !registry.snapshot().ready)
        }
        // The shutdown interrupted the 30 s backoff: the test would time out otherwise.
        #expect(log.all == ["key:start", "key:failed", "key:stop"])
    }

    @Test func aPermanentFailureStopsTheRetries() async throws {
        let log = EventLog()
        let counter = ScriptedService.Counter()
        let spec = ScriptedService.spec("key", script: [.failPermanently], log: log, counter: counter)
        let registry = HealthRegistry()
        let clock = ManualClock()
        let supervisor = Supervisor(services: [spec], registry: registry, logger: quietLogger, random: { 1 }, tickInterval: .milliseconds(20), clock: clock)
        try await withRunningServices([supervisor]) {
            let status = await registry.wait(for: "key", toBe: .failed)
            #expect(status?.state == .failed)
            #expect(status?.lastError == "key cannot work with this configuration")
            // Hours pass, far beyond any backoff (the supervisor's ticks go on): no retry.
            for _ in 0..<3 {
                await clock.sleepers()
                clock.advance(by: .seconds(3600))
            }
            await clock.sleepers()
            #expect(counter.count == 1)
            #expect(await registry.status(of: "key")?.state == .failed)
        }
    }

    @Test func backoffIsCappedAndResetAfterAHealthyRun() async throws {
        let log = EventLog()
        let policy = RestartPolicy(baseDelay: .milliseconds(10), maxDelay: .milliseconds(40), resetAfter: .milliseconds(150))
        let script: [Attempt] = Array(repeating: .fail(after: .zero), count: 6) + [.runThenFail(after: .milliseconds(200)), .run]
        let spec = ScriptedService.spec("mount", script: script, log: log, restart: policy)
        let registry = HealthRegistry()
        try await withSupervisor([spec], registry: registry) {
            // Every entry into backoff, as the registry publishes it.
            var shown: [String] = []
            var previous = ServiceState.waiting
            for await snapshot in await registry.updates() {
                guard let status = snapshot.services.first(where: { $0.name == "mount" }) else { continue }
                if status.state == .backoff, previous != .backoff, let detail = status.detail { shown.append(detail) }
                previous = status.state
                if status.state == .running, status.restarts == 7 { break }
            }
            // 10, 20, 40, then capped at 40 ms; after the healthy run the backoff starts again at 10 ms.
            #expect(shown == [
                "retrying in 10ms", "retrying in 20ms", "retrying in 40ms", "retrying in 40ms", "retrying in 40ms",
                "retrying in 40ms", "retrying in 10ms",
            ])
        }
    }

    @Test func startsInDependencyOrderAndStopsInReverse() async throws {
        let log = EventLog()
        let specs = [
            ScriptedService.spec("mount", dependencies: ["key", "fetch"], script: [.run], log: log),
            ScriptedService.spec("gateway", dependencies: ["attestation"], script: [.run], log: log),
            ScriptedService.spec("key", dependencies: ["attestation"], script: [.run], log: log),
            ScriptedService.spec("fetch", script: [.run], log: log),
            ScriptedService.spec("attestation", script: [.fail(after: .milliseconds(100)), .run], log: log),
        ]
        let registry = HealthRegistry()
        try await withSupervisor(specs, registry: registry) {
            #expect(await registry.wait(for: "mount", toBe: .running)?.state == .running)
            let events = log.all
            func index(_ event: String) -> Int { events.firstIndex(of: event) ?? Int.max }
            // The download does not wait for attestation.
            #expect(index("fetch:running") < index("attestation:running"))
            #expect(index("attestation:running") < index("key:start"))
            #expect(index("attestation:running") < index("gateway:start"))
            #expect(index("key:running") < index("mount:start"))
            #expect(index("fetch:running") < index("mount:start"))
            let waiting = await registry.snapshot()
            #expect(waiting.ready)
        }
        let stops = log.all.filter { $0.hasSuffix(":stop") }.map { $0.replacingOccurrences(of: ":stop", with: "") }
        // The failed first attention attempt stopped first; then everything in reverse dependency order.
        #expect(stops.first == "attestation")
        let orderly = Array(stops.dropFirst())
        func position(_ name: String) -> Int { orderly.firstIndex(of: name) ?? -1 }
        #expect(position("mount") < position("key") && position("mount") < position("fetch"))
        #expect(position("key") < position("attestation") && position("gateway") < position("attestation"))
    }

    @Test func waitingServicesSayWhatTheyWaitFor() async throws {
        let log = EventLog()
        let specs = [
            ScriptedService.spec("attestation", script: [.failPermanently], log: log),
            ScriptedService.spec("key", dependencies: ["attestation"], script: [.run], log: log),
        ]
        let registry = HealthRegistry()
        try await withSupervisor(specs, registry: registry) {
            #expect(await registry.wait(for: "attestation", toBe: .failed)?.state == .failed)
            let key = await registry.status(of: "key")
            #expect(key?.state == .waiting)
            #expect(key?.detail == "waiting for attestation")
            #expect(await registry.snapshot().summary.contains("key waiting (waiting for attestation)"))
        }
        #expect(!log.all.contains("key:start"))
    }

    @Test func rejectsBrokenGraphs() {
        let log = EventLog()
        #expect(throws: Supervisor.GraphError.self) {
            try Supervisor.startOrder([ScriptedService.spec("a", dependencies: ["missing"], script: [.run], log: log)])
        }
        #expect {
            try Supervisor.startOrder([
                ScriptedService.spec("a", dependencies: ["b"], script: [.run], log: log),
                ScriptedService.spec("b", dependencies: ["a"], script: [.run], log: log),
            ])
        } throws: { "\($0)".contains("cycle") }
    }

    @Test func gracefulShutdownCompletesQuickly() async throws {
        let log = EventLog()
        let specs = (0..<5).map { ScriptedService.spec("s\($0)", script: [.run], log: log) }
        let clock = ContinuousClock()
        let elapsed = try await clock.measure {
            let registry = HealthRegistry()
            try await withSupervisor(specs, registry: registry) {
                #expect(await registry.wait(for: "s4", toBe: .running)?.state == .running)
            }
        }
        #expect(elapsed < .seconds(2))
        #expect(log.all.filter { $0.hasSuffix(":stop") }.count == 5)
    }
}
