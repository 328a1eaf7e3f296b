import CaidBase
import CaidCore
import Foundation
import ServiceLifecycle
import Synchronization

/// A record of what test services did, in order, shared by the services of one test.
public final class EventLog: Sendable {
    private struct State {
        var events: [String] = []
        var watchers: [UUID: AsyncStream<[String]>.Continuation] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    public func append(_ event: String) {
        state.withLock {
            $0.events.append(event)
            for watcher in $0.watchers.values { watcher.yield($0.events) }
        }
    }

    public var all: [String] { state.withLock { $0.events } }

    /// Waits until `predicate` holds for the events (each append wakes the wait), up to `timeout`.
    public func wait(
        timeout: Duration = .seconds(10), until predicate: @escaping @Sendable ([String]) -> Bool
    ) async -> Bool {
        let id = UUID()
        let (stream, continuation) = AsyncStream.makeStream(of: [String].self, bufferingPolicy: .bufferingNewest(1))
        state.withLock {
            continuation.yield($0.events)
            $0.watchers[id] = continuation
        }
        defer { _ = state.withLock { $0.watchers.removeValue(forKey: id) } }
        return await Awaiting.first(of: stream, timeout: timeout, where: predicate) != nil || predicate(all)
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
            await Awaiting.cancellation()
        case .runThenFail(let after):
            await handle.running()
            log.append("\(name):running")
            try await Task.sleep(for: after)
            log.append("\(name):failed")
            throw ServiceFailure("\(name) failed after running")
        }
    }
}
