import ArgumentParser
import CacheFS
import CaidBase
import CaidSystemd
import Foundation
import Gocryptfs
import Logging

struct MountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Mount a gocryptfs volume read-only and decrypted, in the foreground.",
        discussion: """
            Prints a line when the mount is ready and unmounts on SIGINT or SIGTERM. A stale mount left at the \
            mount point by a killed process is cleared first. Needs root (or fusermount3) and /dev/fuse. \
            Exit status: 0 unmounted cleanly, 1 failed, 12 wrong password (as gocryptfs), 65/66 bad password file.
            """
    )

    @Option(help: ArgumentHelp("The gocryptfs cipher directory.", valueName: "dir"))
    var cipher: String

    @Option(help: ArgumentHelp("Where the plaintext appears.", valueName: "dir"))
    var mountpoint: String

    @OptionGroup var passfile: PassfileOption

    @Flag(help: "Let other users read the mount (the inference container's user).")
    var allowOther = false

    @Flag(help: ArgumentHelp(
        "Refuse all-zero ciphertext blocks (EIO) instead of reading them as holes of zeros.",
        discussion: "By default caid mount keeps gocryptfs's rule, since a local volume may hold sparse files. caid run always refuses them: a downloaded model has no holes."))
    var refuseHoles = false

    @Option(help: ArgumentHelp(
        "Show every entry as owned by uid:gid, files 0440 and directories 0550, as CAID_MOUNT_OWNER does for caid run.",
        discussion: "Without it the mount shows the ciphertext's owners and modes, as gocryptfs does.", valueName: "uid:gid"))
    var owner: String?

    func run() throws {
        var ownership: CacheFileSystem.Ownership?
        if let owner {
            let ids = owner.split(separator: ":", omittingEmptySubsequences: false).map { UInt32($0) }
            guard ids.count == 2, let uid = ids[0], let gid = ids[1] else {
                printError("caid mount: --owner '\(owner)' is not uid:gid (numbers, like 0:0)")
                throw ExitCode(64)
            }
            ownership = CacheFileSystem.Ownership(uid: uid, gid: gid, fileMode: 0o440)
        }
        LogDestination.bootstrap(level: .info)
        let logger = Logger(label: "caid.mount")
        let password = try passfile.read()
        let volume: Volume
        do {
            volume = try password.withBytes { try Volume(root: cipher, password: $0, refusesHoles: refuseHoles) }
        } catch {
            password.wipe()
            printError("caid mount: \(error)")
            throw ExitCode((error as? GocryptfsError)?.code == .wrongPassword ? 12 : 1)
        }
        password.wipe()
        var options = FuseMount.Options()
        options.allowOther = allowOther
        let mount: FuseMount
        do {
            mount = try FuseMount.mount(CacheFileSystem(volume: volume, ownership: ownership, logger: logger), at: mountpoint, options: options, logger: logger)
        } catch {
            printError("caid mount: \(error)")
            throw ExitCode.failure
        }
        let signals = SignalWatch([SIGINT, SIGTERM]) { mount.unmount() }
        defer { signals.cancel() }
        printOut("mounted \(cipher) read-only at \(mountpoint); ready (Ctrl-C or SIGTERM unmounts)")
        mount.waitUntilUnmounted()
        mount.unmount()
        printOut("unmounted \(mountpoint)")
    }
}
