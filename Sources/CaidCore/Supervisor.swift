import CaidBase
import Logging
import ServiceLifecycle

/// What a supervised service gets to report its progress with.
public struct ServiceHandle: Sendable {
    /// The service's name in the registry.
    public let name: String
    public let registry: HealthRegistry
    /// A logger with the service's name as metadata (`CAID_SERVICE` in the journal).
    public let logger: Logger

    /// A handle outside a supervisor, for a command that runs one service on its own.
    public init(name: String, registry: HealthRegistry, logger: Logger) {
        self.name = name
        self.registry = registry
        self.logger = logger
    }

    /// Declares the service ready: services that need it may start, and caid is ready once all required ones are.
    public func running(_ detail: String? = nil) async {
        await registry.set(name, .running, detail: detail)
    }

    /// Says what the service is doing now, keeping its state.
    public func progress(_ detail: String) async {
        await registry.setDetail(name, detail)
    }

    /// Says why the service is not there yet (a failure it is about to retry), keeping its state; not progress.
    public func retrying(_ detail: String) async {
        await registry.setDetail(name, detail, progress: false)
    }
}

/// One service for the ``Supervisor`` to run.
///
/// The service made by `make` is a lifecycle `Service` whose `run()` works until its task is cancelled; the
/// supervisor cancels it to stop it. It calls ``ServiceHandle/running(_:)`` once it is ready. Returning early counts
/// as a failure. Throwing a ``ClassifiedFailure`` with `isPermanent` stops the retries.
public struct ServiceSpec: Sendable {
    public var name: String
    /// Services that must be running before this one starts.
    public var dependencies: [String]
    /// Whether caid is ready only when this one runs.
    public var required: Bool
    public var restart: RestartPolicy
    public var make: @Sendable (ServiceHandle) -> any Service

    public init(
        name: String, dependencies: [String] = [], required: Bool = true, restart: RestartPolicy = RestartPolicy(),
        make: @escaping @Sendable (ServiceHandle) -> any Service
    ) {
        self.name = name
        self.dependencies = dependencies
        self.required = required
        self.restart = restart
        self.make = make
    }
}

/// Runs caid's services: each as soon as what it needs runs, restarted with backoff when it fails, stopped in
/// reverse order of need on graceful shutdown. It publishes every state change to a ``HealthRegistry``.
public final class Supervisor: Service {
    /// The service graph is unusable.
    public struct GraphError: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    private let specs: [ServiceSpec]
    private let registry: HealthRegistry
    private let logger: Logger
    private let random: @Sendable () -> Double
    private let tickInterval: Duration
    /// Time on the supervisor's clock since it was made, and a sleep on that clock.
    private let elapsed: @Sendable () -> Duration
    private let sleep: @Sendable (Duration) async throws -> Void

    /// - Parameters:
    ///   - services: the services, in any order; the dependency graph decides start and stop order.
    ///   - random: jitter source in `0..<1` (tests pass a fixed one).
    ///   - tickInterval: how often the supervisor shows the watchdog that it is alive.
    ///   - clock: what ticks, backoffs and run times are timed with; tests pass one they move themselves.
    public init<C: Clock<Duration>>(
        services: [ServiceSpec], registry: HealthRegistry, logger: Logger,
        random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) },
        tickInterval: Duration = .seconds(1), clock: C = ContinuousClock()
    ) {
        self.specs = services
        self.registry = registry
        self.logger = logger
        self.random = random
        self.tickInterval = tickInterval
        let start = clock.now
        self.elapsed = { start.duration(to: clock.now) }
        self.sleep = { try await clock.sleep(for: $0) }
    }

    /// The services in an order where each comes after everything it needs.
    public static func startOrder(_ specs: [ServiceSpec]) throws(GraphError) -> [ServiceSpec] {
        let byName = Dictionary(specs.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        guard byName.count == specs.count else { throw GraphError(description: "two services have the same name") }
        var ordered: [ServiceSpec] = []
        var state: [String: Bool] = [:]  // false: visiting, true: done
        func visit(_ spec: ServiceSpec, path: [String]) throws(GraphError) {
            if state[spec.name] == true { return }
            if state[spec.name] == false {
                throw GraphError(description: "services need each other in a cycle: \((path + [spec.name]).joined(separator: " -> "))")
            }
            state[spec.name] = false
            for dependency in spec.dependencies {
                guard let needed = byName[dependency] else {
                    throw GraphError(description: "service \(spec.name) needs \(dependency), which is not registered")
                }
                try visit(needed, path: path + [spec.name])
            }
            state[spec.name] = true
            ordered.append(spec)
        }
        for spec in specs { try visit(spec, path: []) }
        return ordered
    }

    public func run() async throws {
        let ordered = try Self.startOrder(specs)
        for spec in ordered { await registry.register(spec.name, required: spec.required) }
        let stops = ordered.map { _ in OneShotSignal() }
        let stopped = ordered.map { _ in OneShotSignal() }
        let shutdown = OneShotSignal()

        await withTaskGroup(of: Void.self) { group in
            for (index, spec) in ordered.enumerated() {
                group.addTask {
                    await self.supervise(spec, stop: stops[index])
                    stopped[index].fire()
                }
            }
            group.addTask {
                while !shutdown.isFired {
                    await self.registry.tick()
                    if await Self.race(shutdown, { try? await self.sleep(self.tickInterval) }) { break }
                }
            }
            // Returns on graceful shutdown, or throws on cancellation (then every child is cancelled too).
            try? await gracefulShutdown()
            shutdown.fire()
            await registry.beginShutdown()
            for index in ordered.indices.reversed() {
                stops[index].fire()
                await stopped[index].wait()
            }
        }
    }

    /// Runs one service until `stop` fires: waits for its dependencies, starts it, restarts it on failure.
    private func supervise(_ spec: ServiceSpec, stop: OneShotSignal) async {
        var logger = self.logger
        logger[metadataKey: "service"] = "\(spec.name)"
        let handle = ServiceHandle(name: spec.name, registry: registry, logger: logger)
        var backoff = RestartPolicy.Backoff()
        var restarting = false

        defer { logger.debug("supervision ended") }
        while !stop.isFired {
            if !spec.dependencies.isEmpty {
                await registry.set(spec.name, .waiting, detail: "waiting for " + spec.dependencies.joined(separator: ", "), restarted: restarting)
                restarting = false
                let stopped = await Self.race(stop) { await self.registry.waitUntilRunning(spec.dependencies) }
                if stopped { break }
            }
            await registry.set(spec.name, .starting, restarted: restarting)
            restarting = false
            logger.info("starting")
            let started = elapsed()
            let failure: (any Error)?
            do {
                let stopped = try await Self.race(stop) { try await spec.make(handle).run() }
                if stopped { break }
                failure = ServiceFailure("exited without being asked to stop")
            } catch {
                failure = error
            }
            if stop.isFired { break }
            let reason = failure.map { String(describing: $0) } ?? "unknown"
            if let classified = failure as? any ClassifiedFailure, classified.isPermanent {
                logger.error("failed; not retrying: \(reason)")
                await registry.set(spec.name, .failed, detail: "not retried: fix the cause and restart caid", error: reason)
                await stop.wait()
                break
            }
            let delay = backoff.failed(after: elapsed() - started, policy: spec.restart, random: random())
            logger.warning("failed, retrying in \(delay.formatted): \(reason)")
            await registry.set(spec.name, .backoff, detail: "retrying in \(delay.formatted)", error: reason)
            if await Self.race(stop, { try? await self.sleep(delay) }) { break }
            restarting = true
        }
        await registry.set(spec.name, .stopped)
        logger.info("stopped")
    }

    /// Runs `operation` until it finishes or `stop` fires (then it is cancelled and awaited).
    /// - Returns: `true` when `stop` fired first.
    private static func race(_ stop: OneShotSignal, _ operation: @escaping @Sendable () async throws -> Void) async throws -> Bool {
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await operation()
                return false
            }
            group.addTask {
                await stop.wait()
                return true
            }
            defer { group.cancelAll() }
            return try await group.next() ?? true
        }
    }

    private static func race(_ stop: OneShotSignal, _ operation: @escaping @Sendable () async -> Void) async -> Bool {
        // The operation cannot throw, so neither can the race.
        (try? await race(stop) { () async throws in await operation() }) ?? true
    }
}
