import CaidBase
import CaidCore
import ServiceLifecycle
import Synchronization

/// A record of what test services did, in order, shared by the services of one test.
public final class EventLog: Sendable {
    private let events = Mutex<[String]>([])

    public init() {}

    public func append(_ event: String) { events.withLock { $0.append(event) } }

    public var all: [String] { events.withLock { $0 } }

    /// Waits (polling, up to `timeout`) until `predicate` holds for the events.
    public func wait(
        timeout: Duration = .seconds(10), until predicate: ([String]) -> Bool
    ) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if predicate(all) { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return predicate(all)
    }
}

/// What a ``ScriptedService`` does on each of its attempts.
public enum Attempt: Sendable {
    /// Throws a transient error after the delay, before saying it runs.
    case fail(after: Duration)
    /// Throws a permanent error at once.
    case failPermanently
    /// Says it runs, then keeps running until cancelled.
    case run
    /// Says it runs, runs for the duration, then throws a transient error.
    case runThenFail(after: Duration)
}

/// A test service that follows a script, one entry per attempt (the last entry repeats), and logs
/// `name:start`, `name:running`, `name:failed`, `name:stop` to an ``EventLog``.
public struct ScriptedService: Service {
    /// Counts attempts across the fresh instances the supervisor makes.
    public final class Counter: Sendable {
        private let value = Mutex(0)
        public init() {}
        public func next() -> Int { value.withLock { v in defer { v += 1 }; return v } }
        public var count: Int { value.withLock { $0 } }
    }

    let name: String
    let script: [Attempt]
    let counter: Counter
    let log: EventLog
    let handle: ServiceHandle

    /// A spec for the supervisor that makes a fresh service per attempt.
    public static func spec(
        _ name: String, dependencies: [String] = [], required: Bool = true, script: [Attempt], log: EventLog,
        counter: Counter = Counter(), restart: RestartPolicy = RestartPolicy(baseDelay: .milliseconds(20), maxDelay: .milliseconds(200), resetAfter: .seconds(60))
    ) -> ServiceSpec {
        ServiceSpec(name: name, dependencies: dependencies, required: required, restart: restart) { handle in
            ScriptedService(name: name, script: script, counter: counter, log: log, handle: handle)
        }
    }

    public func run() async throws {
        let attempt = counter.next()
        let step = script[min(attempt, script.count - 1)]
        log.append("\(name):start")
        defer { log.append("\(name):stop") }
        switch step {
        case .fail(let after):
            try await Task.sleep(for: after)
            log.append("\(name):failed")
            throw ServiceFailure("\(name) attempt \(attempt) failed on purpose")
        case .failPermanently:
            log.append("\(name):failed")
            throw ServiceFailure("\(name) cannot work with this configuration", permanent: true)
        case .run:
            await handle.running()
            log.append("\(name):running")
            // Runs until the supervisor cancels it.
            while !Task.isCancelled { try? await Task.sleep(for: .seconds(60)) }
        case .runThenFail(let after):
            await handle.running()
            log.append("\(name):running")
            try await Task.sleep(for: after)
            log.append("\(name):failed")
            throw ServiceFailure("\(name) failed after running")
        }
    }
}
