import CacheFS
import CaidCore
import CaidTestSupport
import Foundation
import Logging
import ServiceLifecycle
import Testing

/// The `cachefs` service under the supervisor, as `caid run` will run it.
@Suite(.serialized) struct MountServiceTests {
    func spec(_ ws: Workspace, cipher: String, password: String) -> ServiceSpec {
        ServiceSpec(name: "mount", restart: RestartPolicy(baseDelay: .milliseconds(50), maxDelay: .milliseconds(100))) { handle in
            MountService(cipherDirectory: cipher, mountpoint: ws.path("model"), password: { Secret(Array(password.utf8)) }, handle: handle)
        }
    }

    @Test func mountsWhileRunningAndUnmountsOnStop() async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let (_, cipher) = try ws.gocryptfsVolume(largeSize: 0, manyFiles: 2)
        let registry = HealthRegistry()
        try await withSupervisor([spec(ws, cipher: cipher, password: ws.password)], registry: registry) {
            let status = await registry.wait(for: "mount", toBe: .running)
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
        try await withSupervisor([spec(ws, cipher: ws.path("c"), password: "wrong")], registry: registry) {
            let status = await registry.wait(for: "mount", toBe: .failed)
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
        try await withSupervisor([spec(ws, cipher: cipher, password: ws.password)], registry: registry) {
            #expect(await registry.wait(for: "mount", toBe: .running)?.state == .running)
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
