import CacheFS
import CaidTestSupport
import Foundation
import Gocryptfs
import Logging
import Synchronization
import Testing

/// Stopping while the model is in use, as `systemctl stop` meets it: a process with a file open in the mount, and
/// a container's private bind of it in another mount namespace. The unmount must finish well within caid's 10 s,
/// leave no mount, and say who held it; and a bind of the parent with slave propagation sees the model again once
/// the mount is made anew (what docs/operations.md tells operators to do).
@Suite(.serialized) struct HeldMountTests {
    final class Lines: LogHandler, @unchecked Sendable {
        private let lines = Mutex<[String]>([])
        var logLevel: Logger.Level = .debug
        var metadata: Logger.Metadata = [:]
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) { lines.withLock { $0.append("\(event.level): \(event.message)") } }
        var all: String { lines.withLock { $0.joined(separator: "\n") } }
    }

    func mount(_ ws: Workspace, cipher: String, at mountpoint: String, log: Lines) throws -> FuseMount {
        let logger = Logger(label: "test", factory: { _ in log })
        let volume = try ws.open(cipher)
        return try FuseMount.mount(CacheFileSystem(volume: volume, ownership: .default, logger: logger), at: mountpoint, logger: logger)
    }

    /// Runs the blocking unmount off the test's thread and measures it.
    func timedUnmount(_ mount: FuseMount) async -> Duration {
        let start = ContinuousClock.now
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            Thread { mount.unmount(); done.resume() }.start()
        }
        return ContinuousClock.now - start
    }

    /// Waits until `process` prints `line`.
    func waitFor(_ line: String, from process: Programs.Running) async throws {
        try await FileEvents.line(of: process, what: "\(line) from pid \(process.pid)") { $0 == line ? () : nil }
    }

    func namespace(_ pid: pid_t) -> String? { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/mnt") }

    @Test func anOpenFileDoesNotHoldTheStop() async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let (_, cipher) = try ws.gocryptfsVolume(largeSize: 0, manyFiles: 2)
        let log = Lines()
        let mountpoint = ws.path("model")
        let mount = try mount(ws, cipher: cipher, at: mountpoint, log: log)
        let holder = try Programs.start("/bin/sh", ["-c", "exec 3< \(mountpoint)/dir1/dir2/nested.txt && echo held && exec sleep 60"])
        defer { holder.signal(SIGKILL); _ = holder.wait() }
        try await waitFor("held", from: holder)

        let took = await timedUnmount(mount)
        #expect(took < .seconds(10), "took \(took)")
        #expect(!GocryptfsTool.isMounted(mountpoint))
        #expect(log.all.contains("pid \(holder.pid) (sleep) has open fd 3 "), "\(log.all)")
        #expect(log.all.contains("ending its FUSE connection"))
        // The holder's file is dead now, not served by a daemon that has gone.
        let read = try Programs.run("/bin/cat", ["/proc/\(holder.pid)/fd/3"])
        #expect(read.status != 0 && read.stderr.contains("Transport endpoint is not connected"), "\(read)")
    }

    @Test func aBindInAnotherMountNamespaceDoesNotHoldTheStop() async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let (_, cipher) = try ws.gocryptfsVolume(largeSize: 0, manyFiles: 2)
        let log = Lines()
        let mountpoint = ws.path("model")
        let mount = try mount(ws, cipher: cipher, at: mountpoint, log: log)
        // A namespace of its own whose copy of the mount does not follow the host's unmount: a container's
        // `-v /tmp/model:/tmp/model`.
        let holder = try Programs.start("/usr/bin/unshare", ["-m", "--propagation", "private", "sh", "-c", "echo unshared && exec sleep 60"])
        defer { holder.signal(SIGKILL); _ = holder.wait() }
        try await waitFor("unshared", from: holder)
        #expect(namespace(holder.pid) != namespace(getpid()))

        let took = await timedUnmount(mount)
        #expect(took < .seconds(10), "took \(took)")
        #expect(!GocryptfsTool.isMounted(mountpoint))
        #expect(log.all.contains("pid \(holder.pid) (sleep) has a mount of it in mount namespace mnt:["), "\(log.all)")
        let stale = try Programs.run("/usr/bin/nsenter", ["-t", "\(holder.pid)", "-m", "cat", mountpoint + "/dir1/dir2/nested.txt"])
        #expect(stale.stderr.contains("Transport endpoint is not connected"), "\(stale)")
    }

    /// The documented way: the container binds the parent of MODEL_MOUNT_POINT with rslave propagation, so it
    /// follows the host's unmount (nothing holds the stop) and sees the mount caid makes next. A private bind of
    /// the mount itself, beside it, keeps the dead one.
    @Test func aSlaveBindOfTheParentSeesTheModelAgainAfterTheMountIsRemade() async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let (_, cipher) = try ws.gocryptfsVolume(largeSize: 0, manyFiles: 2)
        let parent = ws.path("caid-model")
        let view = ws.path("container-models"), privateView = ws.path("container-private")
        for dir in [parent, view, privateView] { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        // On a systemd host every mount is shared already; here the parent is made a shared mount of its own.
        #expect(try Programs.run("/bin/mount", ["--bind", parent, parent]).status == 0)
        defer { _ = try? Programs.run("/bin/umount", ["-l", parent]) }
        #expect(try Programs.run("/bin/mount", ["--make-shared", parent]).status == 0)
        let log = Lines()
        let mountpoint = parent + "/model"
        let first = try mount(ws, cipher: cipher, at: mountpoint, log: log)

        // The "container": its own namespace, receiving from the host and never sending back (what Docker's rslave
        // gives), with the parent bound at `view` and, for contrast, the mount itself bound privately.
        let script = """
            mount --make-rslave / && mount --rbind \(parent) \(view) && mount --bind \(mountpoint) \(privateView) \
            && mount --make-private \(privateView) && echo ready && exec sleep 60
            """
        let container = try Programs.start("/usr/bin/unshare", ["-m", "--propagation", "unchanged", "sh", "-c", script])
        defer { container.signal(SIGKILL); _ = container.wait() }
        try await waitFor("ready", from: container)
        func read(_ path: String) throws -> Programs.Result {
            try Programs.run("/usr/bin/nsenter", ["-t", "\(container.pid)", "-m", "cat", path + "/dir1/dir2/nested.txt"])
        }
        #expect(try read(view + "/model").stdout == "nested\n")

        let took = await timedUnmount(first)
        #expect(took < .seconds(10), "took \(took)")
        let second = try mount(ws, cipher: cipher, at: mountpoint, log: log)
        defer { second.unmount() }
        let again = try read(view + "/model")
        #expect(again.status == 0 && again.stdout == "nested\n", "\(again)")
        #expect(try read(privateView).stderr.contains("Transport endpoint is not connected"))
    }

    /// Whether init's open files can be listed decides it: a /proc where they can, and one where they cannot. (The
    /// real answer depends on the host: a test runner short of one of init's capabilities gets false.)
    @Test func whetherOtherProcessesCanBeInspected() throws {
        let proc = try TemporaryDirectory("caid-proc")
        defer { proc.remove() }
        #expect(!MountHolders.canInspectOtherProcesses(procRoot: proc.path))
        try FileManager.default.createDirectory(atPath: proc.path + "/1/fdinfo", withIntermediateDirectories: true)
        #expect(MountHolders.canInspectOtherProcesses(procRoot: proc.path))
    }

    @Test func holderScanParsing() {
        let device = MountHolders.Device(major: 0, minor: 57)
        // glibc's makedev(0, 57) and makedev(259, 300).
        #expect(MountHolders.Device(dev_t(57)) == device)
        #expect(MountHolders.Device(dev_t(0x11032C)) == MountHolders.Device(major: 259, minor: 300))
        #expect(device.kernelNumber == 57)
        let mountinfo = """
            23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
            812 27 0:57 / /tmp/model ro,nosuid,nodev,relatime - fuse.caid caid ro,user_id=0,group_id=0,allow_other
            913 640 0:57 / /models/model ro,relatime master:301 - fuse.caid caid ro
            914 640 0:570 / /other rw - tmpfs tmpfs rw
            """
        #expect(MountHolders.mountIDs(inMountinfo: mountinfo, device: device) == [812, 913])
        #expect(MountHolders.mountID(inFdinfo: "pos:\t0\nflags:\t0100000\nmnt_id:\t913\nino:\t5\n") == 913)
        let maps = """
            7f0000000000-7f0000100000 r--s 00000000 00:39 12 /tmp/model/model.safetensors
            7f0000200000-7f0000300000 r-xp 00000000 fd:01 99 /usr/lib/libc.so.6
            """
        #expect(MountHolders.maps(maps, device: MountHolders.Device(major: 0, minor: 0x39)))
        #expect(!MountHolders.maps(maps, device: MountHolders.Device(major: 0, minor: 0x3A)))
    }
}
