import CacheFS
import CaidCore
import CaidTestSupport
import Foundation
import Logging
import ServiceLifecycle
import Testing

/// The `cachefs` service under the supervisor, as `caid run` will run it.
@Suite(.serialized) struct MountServiceTests {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    func spec(_ ws: Workspace, cipher: String, password: String) -> ServiceSpec {
        ServiceSpec(name: "mount", restart: RestartPolicy(baseDelay: .milliseconds(50), maxDelay: .milliseconds(100))) { handle in
            MountService(cipherDirectory: cipher, mountpoint: ws.path("model"), password: { Secret(Array(password.utf8)) }, handle: handle)
        }
    }

    func run(_ specs: [ServiceSpec], registry: HealthRegistry, _ body: @Sendable () async throws -> Void) async throws {
        let supervisor = Supervisor(services: specs, registry: registry, logger: logger, tickInterval: .milliseconds(20))
        let group = ServiceGroup(configuration: .init(services: [supervisor], logger: logger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            do { try await body() } catch {
                await group.triggerGracefulShutdown()
                throw error
            }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }

    func waitFor(_ registry: HealthRegistry, _ state: ServiceState) async -> ServiceStatus? {
        for _ in 0..<500 {
            if let status = await registry.status(of: "mount"), status.state == state { return status }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return await registry.status(of: "mount")
    }

    @Test func mountsWhileRunningAndUnmountsOnStop() async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let (_, cipher) = try ws.gocryptfsVolume(largeSize: 0, manyFiles: 2)
        let registry = HealthRegistry()
        try await run([spec(ws, cipher: cipher, password: ws.password)], registry: registry) {
            let status = await waitFor(registry, .running)
            #expect(status?.detail == "mounted at \(ws.path("model"))")
            let nested = try String(contentsOfFile: ws.path("model/dir1/dir2/nested.txt"), encoding: .utf8)
            #expect(nested == "nested\n")
        }
        #expect(!GocryptfsTool.isMounted(ws.path("model")))
    }

    @Test func aWrongPasswordFailsForGoodWithoutRetrying() async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        try GocryptfsTool.initVolume(ws.path("c"), passfile: ws.passfile)
        let registry = HealthRegistry()
        try await run([spec(ws, cipher: ws.path("c"), password: "wrong")], registry: registry) {
            let status = await waitFor(registry, .failed)
            #expect(status?.state == .failed)
            #expect(status?.lastError?.contains("password does not open") == true)
            #expect(status?.restarts == 0)
        }
    }

    @Test func anOutsideUnmountIsRepairedByARestart() async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let (_, cipher) = try ws.gocryptfsVolume(largeSize: 0, manyFiles: 2)
        let registry = HealthRegistry()
        try await run([spec(ws, cipher: cipher, password: ws.password)], registry: registry) {
            #expect(await waitFor(registry, .running)?.state == .running)
            GocryptfsTool.unmount(ws.path("model"))
            for _ in 0..<500 {
                if let status = await registry.status(of: "mount"), status.state == .running, status.restarts == 1 { break }
                try await Task.sleep(for: .milliseconds(10))
            }
            let status = await registry.status(of: "mount")
            #expect(status?.restarts == 1 && status?.state == .running)
            #expect(status?.lastError?.contains("unmounted from outside") == true)
            #expect(FileManager.default.fileExists(atPath: ws.path("model/dir1/dir2/nested.txt")))
        }
    }
}
