import CaidBase
import Crypto
import Dispatch
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Writes a complete gocryptfs v2 volume (default flags) from a plaintext directory, without FUSE.
///
/// The volume is written into a hidden `.<name>.partial-…` directory beside the destination and renamed into place
/// at the end, so an interrupted run never leaves a cipher directory that looks complete. Files are encrypted in
/// chunks of ``chunkBlocks`` blocks, in parallel, so memory stays bounded whatever the file sizes.
public struct VolumeWriter: Sendable {
    /// What the writer needs to know.
    public struct Options: Sendable {
        /// scrypt cost; gocryptfs's default is 65536.
        public var scryptN = 65536
        /// Worker threads; by default one per core.
        public var parallelism = ProcessInfo.processInfo.activeProcessorCount
        /// The `Creator` written into `gocryptfs.conf`.
        public var creator = "caid"

        public init() {}
    }

    /// What was written.
    public struct Summary: Sendable {
        public var files = 0
        public var directories = 0
        public var symlinks = 0
        public var bytes: UInt64 = 0
        /// Entries that were not written (devices, sockets, FIFOs), with the reason.
        public var skipped: [String] = []
    }

    /// Plaintext blocks per chunk (1 MiB): the unit of reading, parallel encryption and writing.
    public static let chunkBlocks = 256

    public let options: Options

    public init(options: Options = Options()) {
        self.options = options
    }

    /// A job: one file to encrypt.
    private struct FileJob: Sendable {
        var plain: String
        var cipher: String
        var size: UInt64
        var mode: mode_t
    }

    /// Encrypts `plainDirectory` into the new volume `cipherDirectory`.
    /// - Parameters:
    ///   - password: the volume password, raw bytes.
    ///   - progress: called from worker threads with the plaintext bytes just encrypted.
    ///   - isCancelled: polled between chunks; when it returns true the partial volume is removed.
    /// - Throws: ``GocryptfsError``; nothing is left at `cipherDirectory` then.
    @discardableResult
    public func encrypt(
        plainDirectory: String, cipherDirectory: String, password: UnsafeRawBufferPointer,
        progress: @escaping @Sendable (UInt64) -> Void = { _ in },
        isCancelled: @escaping @Sendable () -> Bool = { false }
    ) throws(GocryptfsError) -> Summary {
        let plainRoot = URL(fileURLWithPath: plainDirectory).standardizedFileURL.path
        let cipherURL = URL(fileURLWithPath: cipherDirectory).standardizedFileURL
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: plainRoot, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw GocryptfsError(.io, "\(plainDirectory) is not a directory")
        }
        if FileManager.default.fileExists(atPath: cipherURL.path) {
            let existing = (try? FileManager.default.contentsOfDirectory(atPath: cipherURL.path)) ?? ["?"]
            guard existing.isEmpty else {
                throw GocryptfsError(.io, "\(cipherDirectory) exists and is not empty; caid encrypt writes a new volume only into an empty or new directory")
            }
        }
        let parent = cipherURL.deletingLastPathComponent().path
        let staging = parent + "/." + cipherURL.lastPathComponent + ".partial-" + UUID().uuidString.prefix(8)
        do throws(GocryptfsError) {
            let summary = try write(plainRoot: plainRoot, staging: staging, password: password, progress: progress, isCancelled: isCancelled)
            if FileManager.default.fileExists(atPath: cipherURL.path) { rmdir(cipherURL.path) }
            guard rename(staging, cipherURL.path) == 0 else {
                throw GocryptfsError(.io, "cannot move the finished volume to \(cipherURL.path): \(String(cString: strerror(errno)))")
            }
            return summary
        } catch {
            try? FileManager.default.removeItem(atPath: staging)
            throw error
        }
    }

    private func write(
        plainRoot: String, staging: String, password: UnsafeRawBufferPointer,
        progress: @escaping @Sendable (UInt64) -> Void, isCancelled: @escaping @Sendable () -> Bool
    ) throws(GocryptfsError) -> Summary {
        try makeDirectory(staging, mode: 0o700)
        var masterBytes = ContentCipher.randomBytes(32)
        let masterKey = SymmetricKey(data: masterBytes)
        wipeBytes(&masterBytes)
        var config = VolumeConfig(
            creator: options.creator, encryptedKey: [],
            scrypt: .init(salt: ContentCipher.randomBytes(32), n: options.scryptN, r: 8, p: 1, keyLength: 32),
            version: 2, features: VolumeConfig.defaultFeatures, longNameMax: 255)
        config.encryptedKey = try VolumeKeys.wrap(masterKey, config: config, password: password, nonce: ContentCipher.randomBytes(16))
        let keys = VolumeKeys(masterKey: masterKey)
        let names = NameCipher(config: config, keys: keys)
        let content = ContentCipher(key: keys.contentKey)
        try writeSmallFile(staging + "/" + NameCipher.configFileName, config.serialized(), mode: 0o400)

        var summary = Summary()
        var jobs: [FileJob] = []
        try writeTree(plain: plainRoot, cipher: staging, names: names, content: content, jobs: &jobs, summary: &summary)
        try encryptFiles(jobs, content: content, progress: progress, isCancelled: isCancelled)
        summary.files = jobs.count
        summary.bytes = jobs.reduce(0) { $0 + $1.size }
        // The root keeps the plaintext root's mode, as gocryptfs's root does.
        var info = stat()
        if lstat(plainRoot, &info) == 0 { chmod(staging, info.st_mode & 0o7777) }
        return summary
    }

    /// Creates the directory tree, names, `.name` files and symlinks, and collects the files to encrypt.
    private func writeTree(
        plain: String, cipher: String, names: NameCipher, content: ContentCipher, jobs: inout [FileJob], summary: inout Summary
    ) throws(GocryptfsError) {
        let iv = ContentCipher.randomBytes(NameCipher.dirIVSize)
        try writeSmallFile(cipher + "/" + NameCipher.dirIVFileName, iv, mode: 0o444)
        summary.directories += 1
        let entries: [String]
        do {
            entries = try FileManager.default.contentsOfDirectory(atPath: plain).sorted()
        } catch {
            throw GocryptfsError(.io, "\(plain) cannot be listed: \(error.localizedDescription)")
        }
        for entry in entries {
            let plainPath = plain + "/" + entry
            var info = stat()
            guard lstat(plainPath, &info) == 0 else {
                throw GocryptfsError(.io, "\(plainPath): \(String(cString: strerror(errno)))")
            }
            let disk = try names.diskName(for: Array(entry.utf8), iv: iv)
            let cipherPath = cipher + "/" + disk.entry
            if let long = disk.longNameContent {
                try writeSmallFile(cipherPath + NameCipher.longNameSuffix, Array(long.utf8), mode: 0o400)
            }
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                try makeDirectory(cipherPath, mode: 0o700)
                try writeTree(plain: plainPath, cipher: cipherPath, names: names, content: content, jobs: &jobs, summary: &summary)
                chmod(cipherPath, info.st_mode & 0o7777)
            case S_IFREG:
                jobs.append(FileJob(plain: plainPath, cipher: cipherPath, size: UInt64(info.st_size), mode: info.st_mode & 0o7777))
            case S_IFLNK:
                guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: plainPath) else {
                    throw GocryptfsError(.io, "\(plainPath): symlink cannot be read")
                }
                guard symlink(content.encryptSymlinkTarget(Array(target.utf8)), cipherPath) == 0 else {
                    throw GocryptfsError(.io, "\(cipherPath): \(String(cString: strerror(errno)))")
                }
                summary.symlinks += 1
            default:
                summary.skipped.append("\(plainPath): not a file, directory or symlink; skipped")
            }
        }
    }

    /// Encrypts every file: small files in parallel with each other, large ones chunk by chunk with the blocks of
    /// each chunk in parallel. At most `parallelism` chunks of 1 MiB are in memory at once.
    private func encryptFiles(
        _ jobs: [FileJob], content: ContentCipher, progress: @escaping @Sendable (UInt64) -> Void,
        isCancelled: @escaping @Sendable () -> Bool
    ) throws(GocryptfsError) {
        let chunkBytes = UInt64(Self.chunkBlocks * ContentCipher.plainBlockSize)
        let large = jobs.filter { $0.size > chunkBytes * 4 }
        let small = jobs.filter { $0.size <= chunkBytes * 4 }
        let failure = Mutex<GocryptfsError?>(nil)
        let next = Mutex(0)
        let workers = max(1, options.parallelism)
        DispatchQueue.concurrentPerform(iterations: workers) { _ in
            while failure.withLock({ $0 == nil }), !isCancelled() {
                let index = next.withLock { value -> Int in
                    defer { value += 1 }
                    return value
                }
                guard index < small.count else { return }
                do throws(GocryptfsError) {
                    try encryptFile(small[index], content: content, parallel: false, progress: progress, isCancelled: isCancelled)
                } catch {
                    failure.withLock { $0 = $0 ?? error }
                }
            }
        }
        for job in large where failure.withLock({ $0 == nil }) {
            do throws(GocryptfsError) {
                try encryptFile(job, content: content, parallel: true, progress: progress, isCancelled: isCancelled)
            } catch {
                failure.withLock { $0 = error }
            }
        }
        if let error = failure.withLock({ $0 }) { throw error }
        if isCancelled() { throw GocryptfsError(.io, "interrupted; the partial volume was removed") }
    }

    private func encryptFile(
        _ job: FileJob, content: ContentCipher, parallel: Bool, progress: @escaping @Sendable (UInt64) -> Void,
        isCancelled: @escaping @Sendable () -> Bool
    ) throws(GocryptfsError) {
        let input = Glibc.open(job.plain, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw GocryptfsError(.io, "\(job.plain): \(String(cString: strerror(errno)))") }
        defer { close(input) }
        let output = Glibc.open(job.cipher, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard output >= 0 else { throw GocryptfsError(.io, "\(job.cipher): \(String(cString: strerror(errno)))") }
        defer {
            fchmod(output, job.mode)
            close(output)
        }
        guard job.size > 0 else { return }
        let fileID = ContentCipher.randomBytes(16)
        try writeAll(output, ContentCipher.header(fileID: fileID), at: 0, path: job.cipher)

        // Chunks are independent (each block's AAD carries its number), so workers take chunks in turn and each
        // reads, seals and writes its own: crypto and I/O overlap across cores.
        let chunkBytes = UInt64(Self.chunkBlocks * ContentCipher.plainBlockSize)
        let chunks = Int((job.size + chunkBytes - 1) / chunkBytes)
        let next = Mutex(0)
        let failure = Mutex<GocryptfsError?>(nil)
        let workers = parallel ? max(1, min(options.parallelism, chunks)) : 1
        DispatchQueue.concurrentPerform(iterations: workers) { _ in
            var plain = [UInt8](repeating: 0, count: Int(chunkBytes))
            defer { wipeBytes(&plain) }
            while failure.withLock({ $0 == nil }), !isCancelled() {
                let chunk = next.withLock { value -> Int in
                    defer { value += 1 }
                    return value
                }
                guard chunk < chunks else { return }
                let offset = UInt64(chunk) * chunkBytes
                let length = Int(min(chunkBytes, job.size - offset))
                let firstBlock = UInt64(chunk * Self.chunkBlocks)
                do throws(GocryptfsError) {
                    try readAll(input, into: &plain, count: length, at: offset, path: job.plain)
                    let sealed = plain.withUnsafeBytes { buffer in
                        Self.sealBlocks(buffer, length: length, firstBlock: firstBlock, fileID: fileID, content: content)
                    }
                    try writeAll(output, sealed, at: ContentCipher.cipherOffset(ofBlock: firstBlock), path: job.cipher)
                    progress(UInt64(length))
                } catch {
                    failure.withLock { $0 = $0 ?? error }
                }
            }
        }
        if let error = failure.withLock({ $0 }) { throw error }
    }

    /// Seals the blocks of one chunk into one contiguous buffer.
    private static func sealBlocks(
        _ plain: UnsafeRawBufferPointer, length: Int, firstBlock: UInt64, fileID: [UInt8], content: ContentCipher
    ) -> [UInt8] {
        let blocks = (length + ContentCipher.plainBlockSize - 1) / ContentCipher.plainBlockSize
        let nonces = ContentCipher.randomBytes(blocks * ContentCipher.nonceSize)
        var out: [UInt8] = []
        out.reserveCapacity(length + blocks * ContentCipher.blockOverhead)
        for block in 0..<blocks {
            let start = block * ContentCipher.plainBlockSize
            let size = min(ContentCipher.plainBlockSize, length - start)
            out += content.encryptBlock(
                UnsafeRawBufferPointer(rebasing: plain[start..<(start + size)]), number: firstBlock + UInt64(block),
                fileID: fileID, nonce: nonces[(block * ContentCipher.nonceSize)..<((block + 1) * ContentCipher.nonceSize)])
        }
        return out
    }

    private func readAll(_ fd: Int32, into buffer: inout [UInt8], count: Int, at offset: UInt64, path: String) throws(GocryptfsError) {
        let got = buffer.withUnsafeMutableBytes { bytes in
            Result { () throws(FileIO.Failure) in try FileIO.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: bytes[0..<count]), at: offset) }
        }
        switch got {
        case .failure(let error): throw GocryptfsError(.io, "\(path): \(error)")
        case .success(let read) where read < count: throw GocryptfsError(.io, "\(path): file shrank while being encrypted")
        case .success: return
        }
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8], at offset: UInt64, path: String) throws(GocryptfsError) {
        let written = bytes.withUnsafeBytes { all in Result { () throws(FileIO.Failure) in try FileIO.write(fd, all, at: offset) } }
        if case .failure(let error) = written { throw GocryptfsError(.io, "\(path): \(error)") }
    }

    private func makeDirectory(_ path: String, mode: mode_t) throws(GocryptfsError) {
        guard mkdir(path, mode) == 0 else { throw GocryptfsError(.io, "\(path): \(String(cString: strerror(errno)))") }
    }

    private func writeSmallFile(_ path: String, _ bytes: [UInt8], mode: mode_t) throws(GocryptfsError) {
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw GocryptfsError(.io, "\(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        try writeAll(fd, bytes, at: 0, path: path)
        fchmod(fd, mode)
    }
}

