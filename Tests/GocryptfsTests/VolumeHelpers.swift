import CaidTestSupport
import Crypto
import Foundation
import Gocryptfs

/// A fresh work area for a gocryptfs test, with a password file; removed with everything mounted in it.
struct Workspace {
    let dir: TemporaryDirectory
    let password = "caid-test-password ünï"
    let passfile: String

    init() throws {
        dir = try TemporaryDirectory("caid-gocryptfs")
        passfile = try dir.write("password", password)
    }

    func path(_ name: String) -> String { dir.path + "/" + name }

    /// Unmounts whatever is mounted under the workspace, then removes it.
    func remove() {
        if let mounts = try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8) {
            for line in mounts.split(separator: "\n") {
                let point = line.split(separator: " ").dropFirst().first.map(String.init) ?? ""
                if point.hasPrefix(dir.path) { GocryptfsTool.unmount(point) }
            }
        }
        dir.remove()
    }

    func open(_ cipher: String) throws -> Volume {
        try Array(password.utf8).withUnsafeBytes { try Volume(root: cipher, password: $0) }
    }

    /// A ciphertext volume made by the real gocryptfs from a plaintext tree made by ``GocryptfsTool/makeTree``.
    func gocryptfsVolume(flags: [String] = [], largeSize: Int, manyFiles: Int = 1000) throws -> (plain: String, cipher: String) {
        let plain = path("plain"), cipher = path("cipher"), mount = path("mnt")
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        try GocryptfsTool.makeTree(at: plain, largeSize: largeSize, manyFiles: manyFiles)
        try GocryptfsTool.initVolume(cipher, passfile: passfile, flags: flags)
        try GocryptfsTool.mount(cipher, at: mount, passfile: passfile)
        defer { GocryptfsTool.unmount(mount) }
        try GocryptfsTool.run("/bin/cp", ["-a", "--sparse=always", plain + "/.", mount + "/"])
        return (plain, cipher)
    }
}

extension Volume {
    /// The tree as caid's reader sees it, in the form of ``GocryptfsTool/snapshot(of:)``.
    func snapshot() throws -> (tree: [String: String], skipped: [String]) {
        var tree: [String: String] = [:]
        var skipped: [String] = []
        func walk(_ directory: String, _ plainPrefix: String) throws {
            let (entries, bad) = try list(directory)
            skipped += bad
            for entry in entries {
                let name = String(decoding: entry.name, as: UTF8.self)
                let plainPath = plainPrefix.isEmpty ? name : plainPrefix + "/" + name
                let cipherPath = directory.isEmpty ? entry.diskName : directory + "/" + entry.diskName
                var info = stat()
                lstat(path(cipherPath), &info)
                let mode = String(info.st_mode & 0o777, radix: 8)
                switch info.st_mode & S_IFMT {
                case S_IFDIR:
                    tree[plainPath] = "dir \(mode)"
                    try walk(cipherPath, plainPath)
                case S_IFLNK:
                    tree[plainPath] = "link " + String(decoding: try readLink(cipherPath), as: UTF8.self)
                default:
                    let file = try openFile(cipherPath)
                    var hash = SHA256()
                    var offset: UInt64 = 0
                    while offset < file.plainSize {
                        let chunk = try file.read(offset: offset, count: 1 << 20)
                        hash.update(data: chunk)
                        offset += UInt64(chunk.count)
                    }
                    tree[plainPath] = "file \(mode) \(offset) " + hash.finalize().map { String(format: "%02x", $0) }.joined()
                }
            }
        }
        try walk("", "")
        return (tree, skipped)
    }
}
