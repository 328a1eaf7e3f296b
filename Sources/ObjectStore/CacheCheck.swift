import Crypto
import Foundation
import Logging
import OSSProtocol
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

extension FileStamp {
    /// The stamp of a regular file (not followed if a link); nil when there is none.
    public static func of(_ path: String) -> FileStamp? {
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { return nil }
        return FileStamp(
            device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: UInt64(info.st_size),
            modified: Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec),
            changed: Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec))
    }
}

/// Asks the fetch service to bring the cache back to what the bucket lists, after the mount found it damaged.
public final class CacheRepairs: Sendable {
    private let bell = Doorbell()

    public init() {}

    /// Records a request; a waiting fetch service wakes up.
    public func request() {
        bell.ring()
    }

    /// Returns once a repair is requested (consuming the request), or at once when cancelled.
    public func wait() async {
        await bell.wait()
    }
}

extension Fetcher {
    /// The check before every mount: each object the manifest lists is in the cache as it was verified (its
    /// ``FileStamp``; a file whose stamp changed has its CRC-64 computed again from disk), and nothing else is there.
    /// Damaged files are removed, so the next fetch downloads them again.
    /// - Returns: how many files had to be read again because their stamp changed.
    /// - Throws: ``FetchError/verification(_:)`` naming the damaged objects, when any was found.
    @discardableResult
    public func verifyCache() throws(FetchError) -> Int {
        guard let data = FileManager.default.contents(atPath: manifestPath), let manifest = try? JSONDecoder().decode(Manifest.self, from: data) else {
            throw FetchError.verification("\(manifestPath) is missing or damaged: the cache has no verified model; the fetch runs again")
        }
        var damaged: [String] = []
        var reread = 0
        for (key, entry) in manifest.entries.sorted(by: { $0.key < $1.key }) {
            guard let path = try? localPath(key) else { damaged.append("\(key) (not a safe path)"); continue }
            let stamp = FileStamp.of(path)
            if let stamp, stamp == entry.file { continue }
            guard let stamp, stamp.size == entry.size else {
                unlink(path)
                damaged.append("\(key) (\(stamp == nil ? "missing" : "size changed"))")
                continue
            }
            reread += 1
            if (try? Self.crc64(ofFileAt: path)) != entry.crc64 {
                unlink(path)
                damaged.append("\(key) (its bytes changed after they were verified)")
            }
        }
        let removed = reconcile(keys: Array(manifest.entries.keys))
        guard damaged.isEmpty else {
            throw FetchError.verification(
                "the cache changed after it was verified: \(damaged.prefix(5).joined(separator: ", "))"
                    + (damaged.count > 5 ? " and \(damaged.count - 5) more" : "") + "; removed, the fetch downloads them again")
        }
        if removed > 0 { logger.warning("removed \(removed) entries the manifest does not list before mounting") }
        return reread
    }

    /// The CRC-64 of a whole file, read in 1 MiB pieces.
    static func crc64(ofFileAt path: String) throws(FetchError) -> UInt64 {
        var crc = CRC64()
        try readFile(at: path) { crc.update($0) }
        return crc.value
    }

    /// The SHA-256 of the file at `path`, as the model manifest records it.
    public static func sha256(ofFileAt path: String) throws(FetchError) -> [UInt8] {
        var hasher = SHA256()
        try readFile(at: path) { hasher.update(bufferPointer: $0) }
        return Array(hasher.finalize())
    }

    /// Feeds the file at `path` (not a link) to `update`, a MiB at a time.
    private static func readFile(at path: String, _ update: (UnsafeRawBufferPointer) -> Void) throws(FetchError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw FetchError.cache("\(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n >= 0 else { throw FetchError.cache("\(path): \(String(cString: strerror(errno)))") }
            if n == 0 { return }
            buffer.withUnsafeBytes { update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
    }
}
