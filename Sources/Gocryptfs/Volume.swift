import CaidBase
import Dispatch
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// An unlocked gocryptfs volume on disk: the thin I/O layer over the pure format types, shared by the mount,
/// `caid encrypt --verify` and the tests.
public final class Volume: Sendable {
    /// The ciphertext directory.
    public let root: String
    public let config: VolumeConfig
    public let keys: VolumeKeys
    public let names: NameCipher
    public let content: ContentCipher

    /// One entry of a decrypted directory listing.
    public struct Entry: Sendable, Equatable {
        /// The plaintext name.
        public var name: [UInt8]
        /// The name on disk (the encrypted name or its `gocryptfs.longname.` form).
        public var diskName: String
    }

    /// Whether an all-zero ciphertext block reads as a hole of zeros (gocryptfs's rule, right for sparse files of a
    /// local volume) or is refused as corruption (right for a downloaded model, which has no holes: otherwise
    /// anyone who can write the object turns 4096 bytes of it into zeros that every check passes).
    public let refusesHoles: Bool

    /// Reads `gocryptfs.conf` in `root` and unlocks it.
    /// - Parameters:
    ///   - password: raw bytes; strip one trailing newline before, as `gocryptfs -passfile` does.
    ///   - refusesHoles: refuse all-zero blocks instead of reading them as zeros.
    public init(root: String, password: UnsafeRawBufferPointer, refusesHoles: Bool = false) throws(GocryptfsError) {
        self.root = root
        self.refusesHoles = refusesHoles
        let configPath = root + "/" + NameCipher.configFileName
        guard let bytes = try? Self.readFile(configPath, limit: 1 << 20) else {
            throw GocryptfsError(.io, "\(configPath) cannot be read: is \(root) a gocryptfs volume?")
        }
        config = try VolumeConfig.parse(bytes)
        keys = try VolumeKeys.unlock(config, password: password)
        names = NameCipher(config: config, keys: keys)
        content = ContentCipher(key: keys.contentKey)
    }

    /// The path of a directory's ciphertext, relative path components joined under the root.
    public func path(_ relative: String) -> String {
        relative.isEmpty ? root : root + "/" + relative
    }

    /// The IV for names in the ciphertext directory at `directory` (a path relative to the root).
    public func directoryIV(_ directory: String) throws(GocryptfsError) -> [UInt8] {
        switch names.mode {
        case .plaintext, .deterministic:
            return NameCipher.zeroIV
        case .perDirectoryIV:
            let file = path(directory) + (directory.isEmpty ? "/" : "/") + NameCipher.dirIVFileName
            guard let iv = try? Self.readFile(file, limit: 64) else {
                throw GocryptfsError(.corruptName, "\(file) cannot be read")
            }
            try NameCipher.validateDirIV(iv)
            return iv
        }
    }

    /// Decrypts the listing of the ciphertext directory at `directory`.
    /// - Returns: the entries, and a message for each entry that had to be skipped (a damaged name), so one bad
    ///   name does not hide the rest of the directory.
    public func list(_ directory: String) throws(GocryptfsError) -> (entries: [Entry], skipped: [String]) {
        let iv = try directoryIV(directory)
        let dirPath = path(directory)
        guard let diskNames = try? FileManager.default.contentsOfDirectory(atPath: dirPath) else {
            throw GocryptfsError(.io, "\(dirPath) cannot be listed")
        }
        var entries: [Entry] = []
        var skipped: [String] = []
        for diskName in diskNames.sorted() where !names.isInternal(diskName) {
            do {
                entries.append(Entry(name: try plainName(of: diskName, in: directory, iv: iv), diskName: diskName))
            } catch {
                skipped.append("\(dirPath)/\(diskName): \(error.message)")
            }
        }
        return (entries, skipped)
    }

    /// The plaintext name of the entry `diskName` in `directory`.
    public func plainName(of diskName: String, in directory: String, iv: [UInt8]) throws(GocryptfsError) -> [UInt8] {
        var encrypted = diskName
        if names.isLongNameEntry(diskName) {
            let file = path(directory) + "/" + diskName + NameCipher.longNameSuffix
            guard let bytes = try? Self.readFile(file, limit: NameCipher.maxLongNameFileSize) else {
                throw GocryptfsError(.corruptName, "\(file) is missing or unreadable")
            }
            encrypted = String(decoding: bytes, as: UTF8.self)
            try NameCipher.verifyLongName(entry: diskName, content: encrypted)
        }
        return try names.decrypt(encrypted, iv: iv)
    }

    /// Decrypts the target of the symlink at `relative`.
    public func readLink(_ relative: String) throws(GocryptfsError) -> [UInt8] {
        let linkPath = path(relative)
        guard let stored = try? FileManager.default.destinationOfSymbolicLink(atPath: linkPath) else {
            throw GocryptfsError(.io, "\(linkPath) is not a readable symlink")
        }
        // With PlaintextNames gocryptfs stores targets as they are (checked against gocryptfs 2.3).
        if names.mode == .plaintext { return Array(stored.utf8) }
        do throws(GocryptfsError) {
            return try content.decryptSymlinkTarget(stored)
        } catch {
            throw GocryptfsError(error.code, "\(linkPath): \(error.message)")
        }
    }

    /// Opens the ciphertext file at `relative` for reading plaintext.
    public func openFile(_ relative: String) throws(GocryptfsError) -> CipherFile {
        try CipherFile(path: path(relative), content: content, refusesHoles: refusesHoles)
    }

    /// Reads a whole small file (configs, dirivs, `.name` files), refusing anything larger than `limit`.
    static func readFile(_ path: String, limit: Int) throws -> [UInt8] {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GocryptfsError(.io, "\(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n >= 0 else { throw GocryptfsError(.io, "\(path): \(String(cString: strerror(errno)))") }
            if n == 0 { return out }
            out += buffer[0..<n]
            guard out.count <= limit else { throw GocryptfsError(.io, "\(path) is larger than \(limit) bytes") }
        }
    }
}

/// An open ciphertext file: reads any plaintext range by decrypting the blocks under it.
public final class CipherFile: @unchecked Sendable {
    // Immutable after init; reads use pread, so concurrent reads are safe.
    public let path: String
    public let plainSize: UInt64
    /// The ciphertext file's size when it was opened.
    public let cipherSize: UInt64
    let fd: Int32
    let fileID: [UInt8]?
    let content: ContentCipher
    let refusesHoles: Bool

    init(path: String, content: ContentCipher, refusesHoles: Bool) throws(GocryptfsError) {
        self.path = path
        self.content = content
        self.refusesHoles = refusesHoles
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GocryptfsError(.io, "\(path): \(String(cString: strerror(errno)))") }
        self.fd = fd
        var info = stat()
        fstat(fd, &info)
        let cipherSize = UInt64(info.st_size)
        self.cipherSize = cipherSize
        plainSize = ContentCipher.plainSize(cipherSize: cipherSize)
        if cipherSize == 0 {
            fileID = nil
            return
        }
        var header = [UInt8](repeating: 0, count: ContentCipher.headerSize)
        let n = header.withUnsafeMutableBytes { (try? FileIO.read(fd, into: $0, at: 0)) ?? -1 }
        do throws(GocryptfsError) {
            guard n == ContentCipher.headerSize else {
                throw GocryptfsError(.corruptHeader, "file is \(cipherSize) bytes, too short for a header")
            }
            fileID = try ContentCipher.fileID(fromHeader: header)
        } catch {
            close(fd)
            throw GocryptfsError(.corruptHeader, "\(path): \(error.message)")
        }
    }

    deinit { close(fd) }

    /// Requests of at least this many blocks are decrypted in parallel.
    static let parallelThreshold = 64
    static let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// The ciphertext bytes ``read(offset:count:)`` reads for that plaintext range: the whole blocks under it.
    public func cipherRange(offset: UInt64, count: Int) -> Range<UInt64> {
        guard fileID != nil, offset < plainSize, count > 0 else { return 0..<0 }
        let end = min(plainSize, offset + UInt64(count))
        let firstBlock = offset / UInt64(ContentCipher.plainBlockSize)
        let lastBlock = (end - 1) / UInt64(ContentCipher.plainBlockSize)
        return ContentCipher.cipherOffset(ofBlock: firstBlock)..<min(cipherSize, ContentCipher.cipherOffset(ofBlock: lastBlock + 1))
    }

    /// Reads up to `count` plaintext bytes at `offset` (fewer at the end of the file).
    /// - Throws: ``GocryptfsError/Code/corruptBlock`` naming the file and block when a block does not verify.
    public func read(offset: UInt64, count: Int) throws(GocryptfsError) -> [UInt8] {
        guard let fileID, offset < plainSize, count > 0 else { return [] }
        let end = min(plainSize, offset + UInt64(count))
        let firstBlock = offset / UInt64(ContentCipher.plainBlockSize)
        let lastBlock = (end - 1) / UInt64(ContentCipher.plainBlockSize)
        let cipherStart = ContentCipher.cipherOffset(ofBlock: firstBlock)
        let cipherLength = Int(lastBlock - firstBlock + 1) * ContentCipher.cipherBlockSize
        // Uninitialized: pread fills it, and only the `got` bytes it filled are looked at.
        let cipher = UnsafeMutableRawBufferPointer.allocate(byteCount: cipherLength, alignment: 16)
        defer { cipher.deallocate() }
        let got: Int
        do {
            got = try FileIO.read(fd, into: cipher, at: cipherStart)
        } catch {
            throw GocryptfsError(.io, "\(path): \(error)")
        }
        let blockCount = Int(lastBlock - firstBlock + 1)
        let received = got
        let failure = Mutex<GocryptfsError?>(nil)
        let plain = [UInt8](unsafeUninitializedCapacity: Int(end - offset)) { output, initialized in
            guard let outBase = output.baseAddress, let cipherBase = cipher.baseAddress else {
                failure.withLock { $0 = GocryptfsError(.io, "\(self.path): no buffer for a read of \(count) bytes") }
                initialized = 0
                return
            }
            let out = SharedPointer(outBase)
            let source = SharedPointer(UnsafeRawPointer(cipherBase))
            // Decrypts blocks [first, last) of this request straight into their place in the output; only a block
            // the range starts or ends inside goes through a scratch block first.
            let decrypt: @Sendable (Int, Int) -> Void = { first, last in
                do throws(GocryptfsError) {
                    let opener = self.content.blockOpener()
                    let holes: ContentCipher.HolePolicy = self.refusesHoles ? .refuse : .zeros
                    let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: ContentCipher.plainBlockSize, alignment: 16)
                    defer { scratch.deallocate() }
                    for index in first..<last {
                        let position = index * ContentCipher.cipherBlockSize
                        let length = min(ContentCipher.cipherBlockSize, received - position)
                        let block = firstBlock + UInt64(index)
                        guard length > 0 else {
                            throw GocryptfsError(.corruptBlock, "block \(block) is missing (file truncated)")
                        }
                        let blockStart = block * UInt64(ContentCipher.plainBlockSize)
                        let from = max(offset, blockStart)
                        let cipherBytes = UnsafeRawBufferPointer(start: UnsafeRawPointer(source.pointer) + position, count: length)
                        let destination = UnsafeMutableRawPointer(out.pointer) + Int(from - offset)
                        if from == blockStart, blockStart + UInt64(ContentCipher.plainBlockSize) <= end {
                            let written = try opener.open(cipherBytes, number: block, fileID: fileID, holes: holes,
                                                          into: UnsafeMutableRawBufferPointer(start: destination, count: ContentCipher.plainBlockSize))
                            guard written == ContentCipher.plainBlockSize else {
                                throw GocryptfsError(.corruptBlock, "block \(block) is short (\(written) bytes) before the end of the file")
                            }
                        } else {
                            let written = try opener.open(cipherBytes, number: block, fileID: fileID, holes: holes, into: scratch)
                            let to = min(end, blockStart + UInt64(written))
                            guard from < to else { continue }
                            UnsafeMutableRawBufferPointer(start: destination, count: Int(to - from))
                                .copyMemory(from: UnsafeRawBufferPointer(rebasing: scratch[Int(from - blockStart)..<Int(to - blockStart)]))
                        }
                    }
                } catch {
                    failure.withLock { $0 = $0 ?? GocryptfsError(error.code, "\(self.path): \(error.message)") }
                }
            }
            // Large requests (the kernel's readahead) are decrypted on all cores.
            let parts = blockCount >= Self.parallelThreshold ? Self.cores : 1
            if parts == 1 {
                decrypt(0, blockCount)
            } else {
                DispatchQueue.concurrentPerform(iterations: parts) { part in
                    decrypt(blockCount * part / parts, blockCount * (part + 1) / parts)
                }
            }
            initialized = Int(end - offset)
        }
        if let failure = failure.withLock({ $0 }) { throw failure }
        return plain
    }
}

/// A pointer shared with parallel workers that each touch a disjoint part of the memory behind it.
struct SharedPointer<Pointee>: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Pointee>
    init(_ pointer: UnsafeMutablePointer<Pointee>) { self.pointer = pointer }
    init(_ pointer: UnsafeRawPointer) where Pointee == UInt8 {
        self.pointer = UnsafeMutablePointer(mutating: pointer.assumingMemoryBound(to: UInt8.self))
    }
}
