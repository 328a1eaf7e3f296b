import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Who keeps a FUSE mount referenced after it was detached: processes with a file open or mapped through it, and
/// mount namespaces that still hold a mount of it (a container's private bind). Read from /proc without touching
/// the mount itself, since a request to it would wait for a daemon that is going away.
public enum MountHolders {
    /// One process that holds the mount, and how.
    public struct Holder: Sendable, Equatable, CustomStringConvertible {
        public var pid: Int32
        public var command: String
        public var how: String

        public var description: String { "pid \(pid) (\(command)) \(how)" }
    }

    /// The device of a mount as mountinfo and the fuse connections directory name it.
    public struct Device: Sendable, Equatable {
        public var major: UInt32
        public var minor: UInt32

        public init(major: UInt32, minor: UInt32) {
            self.major = major
            self.minor = minor
        }

        public init(_ device: dev_t) {
            let value = UInt64(device)
            major = UInt32(truncatingIfNeeded: (value >> 8) & 0xFFF | (value >> 32) & ~0xFFF)
            minor = UInt32(truncatingIfNeeded: value & 0xFF | (value >> 12) & ~0xFF)
        }

        /// The kernel's own number for it (`MKDEV`), the name of its directory under /sys/fs/fuse/connections.
        public var kernelNumber: UInt32 { major << 20 | minor }
    }

    /// The mount IDs (first field) of the mountinfo lines of `device` (third field, `major:minor`).
    public static func mountIDs(inMountinfo text: String, device: Device) -> Set<Int> {
        var ids: Set<Int> = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 3)
            guard fields.count >= 3, fields[2] == "\(device.major):\(device.minor)", let id = Int(fields[0]) else { continue }
            ids.insert(id)
        }
        return ids
    }

    /// The `mnt_id:` of an fdinfo file.
    public static func mountID(inFdinfo text: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix("mnt_id:") {
            return Int(line.dropFirst("mnt_id:".count).trimmingCharacters(in: .whitespaces))
        }
        return nil
    }

    /// Whether a maps file maps a file of `device` (fourth field, hexadecimal `major:minor`).
    public static func maps(_ text: String, device: Device) -> Bool {
        let wanted = String(format: "%02x:%02x", device.major, device.minor)
        return text.split(separator: "\n").contains { line in
            let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            return fields.count >= 4 && fields[3] == wanted
        }
    }

    /// Scans /proc for the holders of the mount of `device`. `ownMountIDs` are the IDs the mount had in caid's own
    /// namespace (a detached mount is no longer listed, but files opened through it still name it). Our own process
    /// is left out, and one process stands for each other mount namespace that has a mount of it.
    public static func scan(device: Device, ownMountIDs: Set<Int>, procRoot: String = "/proc", limit: Int = 20) -> [Holder] {
        let me = getpid()
        let ownNamespace = namespace(procRoot + "/self")
        let pids = ((try? FileManager.default.contentsOfDirectory(atPath: procRoot)) ?? []).compactMap { Int32($0) }.sorted()
        var known = ownMountIDs
        var namespaces: [String: Int32] = [:]
        for pid in pids where pid != me {
            let base = "\(procRoot)/\(pid)"
            guard let table = try? String(contentsOfFile: base + "/mountinfo", encoding: .utf8) else { continue }
            let ids = mountIDs(inMountinfo: table, device: device)
            guard !ids.isEmpty else { continue }
            known.formUnion(ids)
            if let ns = namespace(base), ns != ownNamespace, namespaces[ns] == nil { namespaces[ns] = pid }
        }
        var holders: [Holder] = []
        for pid in pids where pid != me && holders.count < limit {
            let base = "\(procRoot)/\(pid)"
            var how: [String] = []
            if let ns = namespace(base), namespaces[ns] == pid { how.append("has a mount of it in mount namespace \(ns)") }
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: base + "/fdinfo")) ?? []
            let files = fds.compactMap { fd -> String? in
                guard let info = try? String(contentsOfFile: "\(base)/fdinfo/\(fd)", encoding: .utf8),
                    let id = mountID(inFdinfo: info), known.contains(id) else { return nil }
                return (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(base)/fd/\(fd)")).map { "fd \(fd) \($0)" } ?? "fd \(fd)"
            }
            if !files.isEmpty { how.append("has open " + files.prefix(3).joined(separator: ", ") + (files.count > 3 ? " and \(files.count - 3) more" : "")) }
            if let maps = try? String(contentsOfFile: base + "/maps", encoding: .utf8), Self.maps(maps, device: device) {
                how.append("maps a file of it")
            }
            guard !how.isEmpty else { continue }
            holders.append(Holder(pid: pid, command: command(base), how: how.joined(separator: ", ")))
        }
        return holders
    }

    /// Whether this process may read other processes' open files: init's, which every host has and which holds every
    /// capability. A process without CAP_SYS_PTRACE may not read those of one with capabilities it lacks (the
    /// kernel's `cap_ptrace_access_check`), so under caid's unit ``scan(device:ownMountIDs:procRoot:limit:)`` sees
    /// no holder even when there is one.
    public static func canInspectOtherProcesses(procRoot: String = "/proc") -> Bool {
        guard let directory = opendir(procRoot + "/1/fdinfo") else { return false }
        closedir(directory)
        return true
    }

    private static func namespace(_ base: String) -> String? {
        try? FileManager.default.destinationOfSymbolicLink(atPath: base + "/ns/mnt")
    }

    private static func command(_ base: String) -> String {
        ((try? String(contentsOfFile: base + "/comm", encoding: .utf8)) ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
