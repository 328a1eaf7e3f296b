import CaidCore
import Logging
import ServiceLifecycle

/// A logger that drops everything, for tests.
public let quietLogger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

/// Runs `services` in a service group while `body` runs, then shuts the group down gracefully and waits for it,
/// also when `body` throws.
public func withRunningServices(
    _ services: [any Service], _ body: @Sendable () async throws -> Void
) async throws {
    let group = ServiceGroup(configuration: .init(services: services, logger: quietLogger))
    try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        do {
            try await body()
        } catch {
            await group.triggerGracefulShutdown()
            try? await tasks.waitForAll()
            throw error
        }
        await group.triggerGracefulShutdown()
        try await tasks.waitForAll()
    }
}

/// Runs a supervisor over `specs` while `body` runs (see ``withRunningServices(_:_:)``).
public func withSupervisor(
    _ specs: [ServiceSpec], registry: HealthRegistry, _ body: @Sendable () async throws -> Void
) async throws {
    let supervisor = Supervisor(services: specs, registry: registry, logger: quietLogger, random: { 1 }, tickInterval: .milliseconds(20))
    try await withRunningServices([supervisor], body)
}

extension HealthRegistry {
    /// Polls until the service reaches `state` (10 s at most) and returns its status then, or as it is at the end.
    public func wait(for name: String, toBe state: ServiceState) async -> ServiceStatus? {
        for _ in 0..<1000 {
            if let status = self.status(of: name), status.state == state { return status }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return status(of: name)
    }
}
