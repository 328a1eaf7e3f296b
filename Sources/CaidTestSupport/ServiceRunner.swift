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
    /// Waits until the service reaches `state` (each change of the registry wakes the wait; `timeout` at most) and
    /// returns its status then, or as it is at the end.
    public func wait(for name: String, toBe state: ServiceState, timeout: Duration = .seconds(10)) async -> ServiceStatus? {
        let reached = await Awaiting.first(of: updates(), timeout: timeout) { snapshot in
            snapshot.services.contains { $0.name == name && $0.state == state }
        }
        if let reached, let status = reached.services.first(where: { $0.name == name }) { return status }
        return status(of: name)
    }
}
