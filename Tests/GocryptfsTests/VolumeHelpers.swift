import CaidTestSupport
import Crypto
import Foundation
import Gocryptfs

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
