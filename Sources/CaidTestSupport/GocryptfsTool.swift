import Crypto
import Foundation
import Gocryptfs

/// The real `gocryptfs` (Debian package) and a tree of test files covering the format's edge cases.
public enum GocryptfsTool {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    /// Runs a program and throws with its output when it fails.
    @discardableResult
    public static func run(_ path: String, _ arguments: [String]) throws -> Programs.Result {
        let result = try Programs.run(path, arguments)
        guard result.status == 0 else {
            throw Failure(description: "\(path) \(arguments.joined(separator: " ")) exited \(result.status): \(result.stderr)\(result.stdout)")
        }
        return result
    }

    /// `gocryptfs -init` with the given extra flags, password from `passfile`.
    public static func initVolume(_ cipher: String, passfile: String, flags: [String] = []) throws {
        try FileManager.default.createDirectory(atPath: cipher, withIntermediateDirectories: true)
        try run("/usr/bin/gocryptfs", ["-q", "-init", "-passfile", passfile] + flags + [cipher])
    }

    /// Mounts with the real gocryptfs; pair with ``unmount(_:)`` in a `defer`.
    public static func mount(_ cipher: String, at mountpoint: String, passfile: String, readOnly: Bool = false) throws {
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        try run("/usr/bin/gocryptfs", ["-q", "-passfile", passfile] + (readOnly ? ["-ro"] : []) + [cipher, mountpoint])
    }

    /// Unmounts a FUSE mount, retrying while it is busy; never throws (cleanup path).
    public static func unmount(_ mountpoint: String) {
        for _ in 0..<50 {
            let result = try? Programs.run("/usr/bin/fusermount3", ["-u", "-q", mountpoint])
            if result?.status == 0 || !isMounted(mountpoint) { return }
            usleep(100_000)
        }
        _ = try? Programs.run("/usr/bin/fusermount3", ["-u", "-z", "-q", mountpoint])
    }

    /// Whether `path` is a mount point now.
    public static func isMounted(_ path: String) -> Bool {
        let resolved = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        guard let mounts = try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8) else { return false }
        return mounts.split(separator: "\n").contains { $0.split(separator: " ").dropFirst().first.map(String.init) == resolved }
    }

    /// Names of 175 (not hashed), 176 (hashed) and 255 bytes, a long directory name, and UTF-8.
    public static let name175 = String(repeating: "a", count: 170) + ".bin1"
    public static let name176 = String(repeating: "b", count: 171) + ".bin2"
    public static let name255 = String(repeating: "c", count: 251) + ".bin"
    public static let longDirectory = String(repeating: "d", count: 200)
    public static let unicodeName = "ünïcødé-模型-🚀.txt"

    /// Writes the edge-case tree into `root`: sizes around the block edges, random sizes, a sparse file, nested
    /// directories, long names, symlinks, UTF-8, a directory of `manyFiles` files and a file of `largeSize` bytes.
    public static func makeTree(at root: String, largeSize: Int = 64 << 20, manyFiles: Int = 1000, sparseLarge: Bool = false) throws {
        let fm = FileManager.default
        let urandom = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
        defer { try? urandom.close() }
        func random(_ count: Int) throws -> Data {
            try urandom.read(upToCount: count) ?? Data()
        }
        func file(_ path: String, _ data: Data, mode: Int = 0o644) throws {
            let full = root + "/" + path
            try fm.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try data.write(to: URL(fileURLWithPath: full))
            try fm.setAttributes([.posixPermissions: mode], ofItemAtPath: full)
        }
        try file("empty", Data())
        for size in [1, 4095, 4096, 4097, 8192, 12289, 100_000] { try file("size-\(size)", try random(size)) }
        for index in 0..<5 { try file("random-\(index)", try random(Int.random(in: 0..<300_000))) }
        try file("readonly.txt", Data("read only\n".utf8), mode: 0o400)
        try file("script.sh", Data("#!/bin/sh\necho hi\n".utf8), mode: 0o755)
        try file("dir1/dir2/nested.txt", Data("nested\n".utf8))
        try file(name175, try random(1000))
        try file(name176, try random(5000))
        try file(name255, try random(10))
        try file(longDirectory + "/inside.txt", Data("inside a long-named directory\n".utf8))
        try file(unicodeName, Data("ünïcødé\n".utf8))
        try file("模型/权重.safetensors", try random(777))
        // Sparse: 512 KiB of hole, then 13 bytes.
        let sparse = root + "/sparse.bin"
        _ = fm.createFile(atPath: sparse, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: sparse))
        try handle.truncate(atOffset: 524_288)
        try handle.seek(toOffset: 524_288)
        try handle.write(contentsOf: Data("after a hole\n".utf8))
        try handle.close()
        try fm.createSymbolicLink(atPath: root + "/link-to-nested", withDestinationPath: "dir1/dir2/nested.txt")
        try fm.createSymbolicLink(atPath: root + "/dir1/link-up", withDestinationPath: "../size-1")
        try fm.createSymbolicLink(atPath: root + "/dangling", withDestinationPath: "/nonexistent/target")
        try fm.createDirectory(atPath: root + "/many", withIntermediateDirectories: true)
        for index in 0..<manyFiles { try file("many/file-\(index).txt", Data("file \(index)\n".utf8)) }
        if largeSize > 0, sparseLarge {
            // Zeros without disk cost, for tests where the content does not matter.
            _ = fm.createFile(atPath: root + "/large.bin", contents: nil)
            let out = try FileHandle(forWritingTo: URL(fileURLWithPath: root + "/large.bin"))
            try out.truncate(atOffset: UInt64(largeSize))
            try out.close()
        } else if largeSize > 0 {
            let big = root + "/large.bin"
            _ = fm.createFile(atPath: big, contents: nil)
            let out = try FileHandle(forWritingTo: URL(fileURLWithPath: big))
            var written = 0
            while written < largeSize {
                let chunk = min(4 << 20, largeSize - written)
                try out.write(contentsOf: try random(chunk))
                written += chunk
            }
            try out.close()
        }
    }

    /// What a tree holds, path by path, for comparing two trees: a file's bytes (hashed), a link's target, a
    /// directory, and the permission bits.
    public static func snapshot(of root: String) throws -> [String: String] {
        var result: [String: String] = [:]
        func walk(_ relative: String) throws {
            let full = relative.isEmpty ? root : root + "/" + relative
            for name in try FileManager.default.contentsOfDirectory(atPath: full) {
                let path = relative.isEmpty ? name : relative + "/" + name
                var info = stat()
                lstat(root + "/" + path, &info)
                let mode = String(info.st_mode & 0o777, radix: 8)
                switch info.st_mode & S_IFMT {
                case S_IFDIR:
                    result[path] = "dir \(mode)"
                    try walk(path)
                case S_IFLNK:
                    result[path] = "link " + (try FileManager.default.destinationOfSymbolicLink(atPath: root + "/" + path))
                default:
                    let data = try Data(contentsOf: URL(fileURLWithPath: root + "/" + path))
                    result[path] = "file \(mode) \(data.count) " + SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
                }
            }
        }
        try walk("")
        return result
    }
}

extension Volume {
    /// The on-disk name of plaintext `name` in `directory`: where a test finds the ciphertext of a file to damage.
    public func diskName(of name: [UInt8], in directory: String) throws(GocryptfsError) -> String {
        try names.diskName(for: name, iv: directoryIV(directory)).entry
    }
}
