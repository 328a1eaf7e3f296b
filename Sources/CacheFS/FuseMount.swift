import CaidBase
import CFuse3
import Foundation
import Gocryptfs
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A mounted ``CacheFileSystem``: the libfuse session, its mount and the thread that runs its request loop.
///
/// Mount with ``mount(_:at:options:logger:)``; ``unmount()`` ends the loop, unmounts and drops the file system
/// (and with it the volume's keys). ``waitUntilUnmounted()`` returns when the loop ends for any reason, such as an
/// operator's `fusermount3 -u`.
public final class FuseMount: Sendable {
    /// How to mount.
    public struct Options: Sendable {
        /// Let other users (the inference container's) read the mount; needs `user_allow_other` for non-root.
        public var allowOther = false
        /// FUSE worker threads at most.
        public var maxThreads = 8
        /// The kernel readahead for the mount, in KiB (model files are read sequentially).
        public var readAheadKiB = 2048
        /// How long ``FuseMount/unmount()`` waits for the kernel to let go after the detach, before it ends the FUSE
        /// connection; and again after. A mount nobody holds lets go within milliseconds; one that is held never does,
        /// so a longer grace only delays the stop (caid has 10 s for all of it, on a slow host too).
        public var unmountGrace: Duration = .seconds(1)

        public init() {}
    }

    /// Mounting failed.
    public struct MountError: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    private struct Session: @unchecked Sendable {
        let pointer: OpaquePointer
    }

    public let mountpoint: String
    private let session: Session
    private let fileSystem: Unmanaged<CacheFileSystem>
    private let finished = Mutex(false)
    private let loopDone = DispatchSemaphore(value: 0)
    private let loopEnded = OneShotSignal()
    private let logger: Logger
    /// The mount's device and its mount IDs in caid's namespace, read once it is up; what the holder scan and
    /// the FUSE connection's abort file go by.
    private let identity = Mutex<(device: MountHolders.Device, mountIDs: Set<Int>)?>(nil)
    /// How long the request loop gets to end after the unmount before the connection is aborted, and after that.
    private let grace: Duration

    private init(mountpoint: String, session: Session, fileSystem: Unmanaged<CacheFileSystem>, grace: Duration, logger: Logger) {
        self.mountpoint = mountpoint
        self.grace = grace
        self.session = session
        self.fileSystem = fileSystem
        self.logger = logger
    }

    /// Mounts `fileSystem` read-only at `mountpoint`, first clearing a stale mount a killed process left there.
    public static func mount(_ fileSystem: CacheFileSystem, at mountpoint: String, options: Options = Options(), logger: Logger) throws(MountError) -> FuseMount {
        // Absolute, so that the checks walk up to "/" and the unmount does not depend on the working directory.
        let mountpoint = PathText.absolute(mountpoint)
        try prepareMountpoint(mountpoint, logger: logger)
        var mountOptions = "ro,default_permissions,fsname=caid,subtype=caid"
        if options.allowOther { mountOptions += ",allow_other" }
        let arguments = ["caid", "-o", mountOptions]
        var cArguments: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
        defer { cArguments.forEach { free($0) } }
        let retained = Unmanaged.passRetained(fileSystem)
        var ops = FuseBridge.operations()
        let created = cArguments.withUnsafeMutableBufferPointer { buffer -> OpaquePointer? in
            var args = fuse_args(argc: Int32(arguments.count), argv: buffer.baseAddress, allocated: 0)
            defer { fuse_opt_free_args(&args) }
            return caid_fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, retained.toOpaque())
        }
        guard let pointer = created else {
            retained.release()
            throw MountError(description: "libfuse could not create a session (is /dev/fuse there? see the log)")
        }
        guard fuse_session_mount(pointer, mountpoint) == 0 else {
            fuse_session_destroy(pointer)
            retained.release()
            throw MountError(description: "cannot mount at \(mountpoint): it needs root (CAP_SYS_ADMIN) or fusermount3, and /dev/fuse")
        }
        let mount = FuseMount(mountpoint: mountpoint, session: Session(pointer: pointer), fileSystem: retained, grace: options.unmountGrace, logger: logger)
        let thread = Thread { [mount] in mount.loop(maxThreads: options.maxThreads) }
        thread.name = "caid-fuse"
        thread.start()
        // Only now: stat on the mount point waits for the loop to answer the kernel's INIT.
        mount.recordIdentity()
        mount.setReadAhead(kibibytes: options.readAheadKiB)
        return mount
    }

    private func loop(maxThreads: Int) {
        let config = fuse_loop_cfg_create()
        fuse_loop_cfg_set_max_threads(config, UInt32(maxThreads))
        fuse_loop_cfg_set_clone_fd(config, 1)
        let status = caid_fuse_session_loop_mt(session.pointer, config)
        fuse_loop_cfg_destroy(config)
        if status != 0 { logger.warning("FUSE loop ended with status \(status)") }
        loopDone.signal()
        loopEnded.fire()
    }

    /// Unmounts, waits for the loop to end, and releases the file system. Safe to call more than once and from
    /// several threads: every caller returns only once the teardown is complete.
    ///
    /// libfuse detaches the mount lazily when caid is root (`umount2(MNT_DETACH)`, libfuse `lib/mount.c`
    /// `fuse_kern_unmount`; fusermount3 `-z` otherwise), which always succeeds, but the kernel keeps the file system
    /// while anything still references it: a process with a file open in it, or another mount namespace with a
    /// mount of it (a container's `-v /tmp/model:/tmp/model` is one). The request loop then never ends, and caid
    /// would miss its stop timeout. So when the loop has not ended within the grace, the holders are logged and the
    /// connection is aborted through fusectl (`/sys/fs/fuse/connections/<dev>/abort`, the kernel's
    /// Documentation/filesystems/fuse.rst): their reads fail with ENOTCONN and the loop ends.
    public func unmount() {
        finished.withLock { done in
            guard !done else { return }
            done = true
            fuse_session_exit(session.pointer)
            fuse_session_unmount(session.pointer)
            if !waitForLoop(grace) {
                endHeldConnection()
                guard waitForLoop(grace) else {
                    // The session's threads may still run: leave it and the file system allocated rather than free
                    // them under those threads. caid is stopping or mounting anew; a stale mount is cleared then.
                    logger.error("the FUSE request loop for \(mountpoint) did not end after the connection was aborted; leaving it")
                    return
                }
            }
            loopDone.signal()  // for other waiters
            fuse_session_destroy(session.pointer)
            fileSystem.takeUnretainedValue().close()
            fileSystem.release()
        }
    }

    private func waitForLoop(_ timeout: Duration) -> Bool {
        let nanoseconds = Int(timeout.components.seconds) * 1_000_000_000 + Int(timeout.components.attoseconds / 1_000_000_000)
        return loopDone.wait(timeout: .now() + .nanoseconds(nanoseconds)) == .success
    }

    /// Logs who still holds the detached mount and aborts its FUSE connection.
    private func endHeldConnection() {
        guard let identity = self.identity.withLock({ $0 }) else {
            logger.error("\(mountpoint) is still in use after the unmount, and its device is unknown: cannot end its FUSE connection")
            return
        }
        let holders = MountHolders.scan(device: identity.device, ownMountIDs: identity.mountIDs)
        let who: String
        if !holders.isEmpty {
            who = holders.map(\.description).joined(separator: "; ")
        } else if !MountHolders.canInspectOtherProcesses() {
            who = "caid cannot see which processes hold it (reading other processes' open files needs CAP_SYS_PTRACE, which caid's unit leaves out)"
        } else {
            who = "no process found (a reference from the kernel, or a process that just exited)"
        }
        logger.warning("\(mountpoint) is still in use after the unmount: \(who); ending its FUSE connection, so those readers get ENOTCONN (a container that bound the mount must be restarted, or bind its parent with rslave propagation: see docs/operations.md)", metadata: [
            "holders": "\(holders.map { "\($0.pid)" }.joined(separator: ","))",
        ])
        let connections = "/sys/fs/fuse/connections"
        let abort = "\(connections)/\(identity.device.kernelNumber)/abort"
        if access(abort, F_OK) != 0, access(connections, F_OK) == 0 {
            // systemd mounts fusectl at boot (sys-fs-fuse-connections.mount); elsewhere caid mounts it itself.
            if caid_mount_fusectl(connections) != 0 {
                logger.debug("cannot mount fusectl at \(connections): \(String(cString: strerror(errno)))")
            }
        }
        let fd = open(abort, O_WRONLY)
        guard fd >= 0 else {
            logger.error("cannot end the FUSE connection of \(mountpoint) through \(abort): \(String(cString: strerror(errno)))")
            return
        }
        defer { close(fd) }
        let written = [UInt8(ascii: "1")].withUnsafeBytes { write(fd, $0.baseAddress, 1) }
        if written != 1 { logger.error("cannot write \(abort): \(String(cString: strerror(errno)))") }
    }

    /// Reads the mount's device and its mount IDs here, once it is up.
    private func recordIdentity() {
        var info = stat()
        guard stat(mountpoint, &info) == 0 else { return }
        let device = MountHolders.Device(info.st_dev)
        let table = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        let ids = MountHolders.mountIDs(inMountinfo: table, device: device)
        identity.withLock { $0 = (device: device, mountIDs: ids) }
    }

    /// Blocks until the request loop ends (unmounted by ``unmount()`` or from outside).
    public func waitUntilUnmounted() {
        loopDone.wait()
        loopDone.signal()
    }

    /// The mount's device (`0:<minor>`), known once it is up.
    public var device: MountHolders.Device? { identity.withLock { $0?.device } }

    /// Returns when the request loop ends, or the task is cancelled.
    public func unmounted() async {
        await loopEnded.wait()
    }

    /// Raises the kernel's readahead for this mount (its backing device is `0:<minor>` under /sys/class/bdi).
    private func setReadAhead(kibibytes: Int) {
        var info = stat()
        guard stat(mountpoint, &info) == 0 else { return }
        let device = UInt64(info.st_dev)
        let major = (device >> 8) & 0xFFF | (device >> 32) & ~0xFFF
        let minor = device & 0xFF | (device >> 12) & ~0xFF
        let path = "/sys/class/bdi/\(major):\(minor)/read_ahead_kb"
        if (try? "\(kibibytes)".write(toFile: path, atomically: false, encoding: .utf8)) == nil {
            logger.debug("cannot set \(path); keeping the kernel's readahead")
        }
    }

    /// Refuses a mount point another local user could have prepared: root mounting over a symlink mounts over its
    /// target (`/tmp/model` → `/etc`), and a directory another user owns, or one inside a directory others may
    /// write without the sticky bit, can be swapped for one.
    static func checkOwnership(_ mountpoint: String) throws(MountError) {
        let me = geteuid()
        var info = stat()
        if lstat(mountpoint, &info) == 0 {
            if info.st_mode & S_IFMT == S_IFLNK {
                let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: mountpoint)) ?? "?"
                throw MountError(description: "\(mountpoint) is a symbolic link (to \(target)); caid does not mount over a link a local user could point anywhere: remove it, caid creates the directory itself")
            }
            if info.st_uid != me {
                throw MountError(description: "\(mountpoint) is owned by uid \(info.st_uid), not by caid (uid \(me)); another user may have prepared it: remove it (caid creates it) or chown it to uid \(me)")
            }
        }
        var parent = PathText.parent(of: mountpoint)
        while !parent.isEmpty {
            var up = stat()
            if stat(parent, &up) == 0 {
                let othersWrite = up.st_mode & (S_IWGRP | S_IWOTH) != 0
                if up.st_uid != 0 && up.st_uid != me || othersWrite && up.st_mode & S_ISVTX == 0 {
                    throw MountError(description: "\(parent), above the mount point \(mountpoint), can be changed by other users (owner uid \(up.st_uid), mode \(String(up.st_mode & 0o7777, radix: 8))): choose a MODEL_MOUNT_POINT under a directory only root may change")
                }
            }
            if parent == "/" { break }
            parent = PathText.parent(of: parent)
        }
    }

    /// Clears a stale FUSE mount ("Transport endpoint is not connected") and refuses a live one.
    static func prepareMountpoint(_ mountpoint: String, logger: Logger) throws(MountError) {
        // A stale mount first: stat of a dead FUSE mount may be answered from the kernel's attribute cache, with the
        // dead mount's owner (CAID_MOUNT_OWNER), so the ownership check must look at what lies under it. statvfs
        // always reaches the FUSE daemon, and fails with ENOTCONN when it is gone.
        var fsInfo = statvfs()
        if statvfs(mountpoint, &fsInfo) != 0, errno == ENOTCONN {
            logger.warning("clearing a stale mount at \(mountpoint) left by a process that died")
            guard caid_umount_detach(mountpoint) == 0 else {
                throw MountError(description: "\(mountpoint) holds a stale mount that cannot be cleared: \(String(cString: strerror(errno))); run: fusermount3 -uz \(mountpoint)")
            }
        }
        try checkOwnership(mountpoint)
        var info = stat()
        if stat(mountpoint, &info) != 0 {
            guard errno == ENOENT else { throw MountError(description: "\(mountpoint): \(String(cString: strerror(errno)))") }
            do {
                try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
            } catch {
                throw MountError(description: "cannot create the mount point \(mountpoint): \(error.localizedDescription)")
            }
            return
        }
        guard info.st_mode & S_IFMT == S_IFDIR else { throw MountError(description: "\(mountpoint) is not a directory") }
        if isMountPoint(mountpoint) {
            throw MountError(description: "\(mountpoint) is already a mount point; unmount it first (is another caid running?)")
        }
    }

    /// Whether `path` is listed in /proc/self/mountinfo as a mount point.
    static func isMountPoint(_ path: String) -> Bool {
        let resolved = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        guard let table = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return false }
        return table.split(separator: "\n").contains { line in
            let fields = line.split(separator: " ")
            return fields.count > 4 && unescape(String(fields[4])) == resolved
        }
    }

    /// mountinfo escapes space, tab, newline and backslash as octal.
    private static func unescape(_ field: String) -> String {
        field.replacingOccurrences(of: "\\040", with: " ").replacingOccurrences(of: "\\011", with: "\t")
            .replacingOccurrences(of: "\\012", with: "\n").replacingOccurrences(of: "\\134", with: "\\")
    }
}
