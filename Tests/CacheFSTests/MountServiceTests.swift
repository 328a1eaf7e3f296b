import CacheFS
import CaidBase
import CaidCore
import CaidTestSupport
import Foundation
import Gocryptfs
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

    /// The mount `caid run` makes: a downloaded model has no holes, so an all-zero block (an overwrite that OSS's
    /// CRC-64 and the fetch both accept) is EIO, not 4096 zero bytes.
    @Test func anAllZeroBlockIsRefusedInTheModelMount() async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let (_, cipher) = try ws.gocryptfsVolume(largeSize: 64 * 1024, manyFiles: 0)
        let volume = try ws.open(cipher)
        let large = try #require(try volume.list("").entries.first { $0.name == Array("large.bin".utf8) })
        let path = volume.path(large.diskName)
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        try handle.seek(toOffset: 18 + 4128)
        try handle.write(contentsOf: Data(count: 4128))
        try handle.close()
        let registry = HealthRegistry()
        try await withSupervisor([spec(ws, cipher: cipher, password: ws.password)], registry: registry) {
            #expect(await registry.wait(for: "mount", toBe: .running)?.state == .running)
            let fd = open(ws.path("model/large.bin"), O_RDONLY)
            #expect(fd >= 0)
            defer { close(fd) }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let first = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 4096, 0) }
            #expect(first == 4096)
            let zeroed = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 4096, 4096) }
            #expect(zeroed == -1 && errno == EIO)
        }
    }

    /// A mount point a local user prepared is refused: a symlink (root would mount over its target) and a directory
    /// another user owns. Nothing is mounted over either.
    @Test func aHijackedMountPointIsRefused() async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let (_, cipher) = try ws.gocryptfsVolume(largeSize: 0, manyFiles: 2)
        try FileManager.default.createDirectory(atPath: ws.path("etc-like"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: ws.path("model"), withDestinationPath: ws.path("etc-like"))
        let registry = HealthRegistry()
        try await withSupervisor([spec(ws, cipher: cipher, password: ws.password)], registry: registry) {
            let status = await registry.wait(for: "mount", toBe: .backoff)
            #expect(status?.lastError?.contains("is a symbolic link") == true, "\(status?.lastError ?? "")")
        }
        #expect(!GocryptfsTool.isMounted(ws.path("etc-like")))

        try FileManager.default.removeItem(atPath: ws.path("model"))
        try FileManager.default.createDirectory(atPath: ws.path("model"), withIntermediateDirectories: true)
        #expect(chown(ws.path("model"), 65534, 65534) == 0)
        try await withSupervisor([spec(ws, cipher: cipher, password: ws.password)], registry: registry) {
            let status = await registry.wait(for: "mount", toBe: .backoff)
            #expect(status?.lastError?.contains("is owned by uid 65534") == true, "\(status?.lastError ?? "")")
        }
        #expect(!GocryptfsTool.isMounted(ws.path("model")))
    }

    /// The mount shows caid's owner and modes, not the ciphertext's (root's 0600 under the unit's UMask=0077): a
    /// user in the configured group reads the model, another non-root user does not.
    @Test func nonRootReadsAreAllowedAndRefusedAsConfigured() async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let (_, cipher) = try ws.gocryptfsVolume(largeSize: 0, manyFiles: 2)
        // Ciphertext as the unit's umask leaves it, and a path other users may traverse to the mount.
        _ = try Programs.run("/bin/chmod", ["-R", "go-rwx", cipher])
        #expect(chmod(ws.path(""), 0o711) == 0)
        let registry = HealthRegistry()
        let ownership = CacheFileSystem.Ownership(uid: 0, gid: 65534, fileMode: 0o440)
        let spec = ServiceSpec(name: "mount") { handle in
            MountService(cipherDirectory: cipher, mountpoint: ws.path("model"), ownership: ownership, password: { Secret(Array(ws.password.utf8)) }, handle: handle)
        }
        try await withSupervisor([spec], registry: registry) {
            #expect(await registry.wait(for: "mount", toBe: .running)?.state == .running)
            let file = ws.path("model/dir1/dir2/nested.txt")
            var info = stat()
            #expect(stat(file, &info) == 0)
            #expect(info.st_uid == 0 && info.st_gid == 65534 && info.st_mode & 0o777 == 0o440)
            // nobody:nogroup is in the group: reads.
            let allowed = try Programs.run("/usr/bin/setpriv", ["--reuid", "65534", "--regid", "65534", "--clear-groups", "/bin/cat", file])
            #expect(allowed.status == 0, "\(allowed.stderr)")
            #expect(allowed.stdout == "nested\n")
            // Another user is not.
            let refused = try Programs.run("/usr/bin/setpriv", ["--reuid", "4242", "--regid", "4242", "--clear-groups", "/bin/cat", file])
            #expect(refused.status != 0)
            #expect(refused.stderr.contains("Permission denied"))
        }
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

    @Test(.timeLimit(.minutes(1))) func anOutsideUnmountIsRepairedByARestart() async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let (_, cipher) = try ws.gocryptfsVolume(largeSize: 0, manyFiles: 2)
        let registry = HealthRegistry()
        try await withSupervisor([spec(ws, cipher: cipher, password: ws.password)], registry: registry) {
            #expect(await registry.wait(for: "mount", toBe: .running)?.state == .running)
            GocryptfsTool.unmount(ws.path("model"))
            // As the registry publishes it: running again after one restart.
            var status: ServiceStatus?
            for await snapshot in await registry.updates() {
                status = snapshot.services.first { $0.name == "mount" }
                if status?.state == .running, status?.restarts == 1 { break }
            }
            #expect(status?.restarts == 1 && status?.state == .running)
            #expect(status?.lastError?.contains("unmounted from outside") == true)
            #expect(FileManager.default.fileExists(atPath: ws.path("model/dir1/dir2/nested.txt")))
        }
    }
}
