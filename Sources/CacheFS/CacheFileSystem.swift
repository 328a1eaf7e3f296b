import Foundation
import Gocryptfs
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The read-only decrypted view of a gocryptfs volume, by inode, as the FUSE low-level API asks for it.
///
/// It knows nothing of FUSE: each operation returns a value or an errno, and ``FuseBridge`` turns those into
/// replies. The volume is immutable while mounted, so every inode, attribute and listing is computed once and kept.
public final class CacheFileSystem: Sendable {
    /// The root's inode number (FUSE_ROOT_ID).
    public static let rootInode: UInt64 = 1

    /// An inode: where its ciphertext is and what `stat` says of the plaintext.
    public struct Node: Sendable {
        public var inode: UInt64
        /// The ciphertext path relative to the volume root ("" for the root).
        public var cipherPath: String
        public var attributes: stat
    }

    /// A directory entry as readdir returns it.
    public struct DirectoryEntry: Sendable {
        public var name: [UInt8]
        public var node: Node
    }

    /// An open handle: the file, and for a streamed one the copy it was opened on.
    private struct OpenFile {
        var file: CipherFile
        var cipherPath: String
        var generation: UInt64?
    }

    private struct ChildKey: Hashable {
        var parent: UInt64
        var name: [UInt8]
    }

    private struct Tables {
        var nodes: [UInt64: Node] = [:]
        var children: [ChildKey: UInt64] = [:]
        var listings: [UInt64: [DirectoryEntry]] = [:]
        var ivs: [UInt64: [UInt8]] = [:]
        var files: [UInt64: OpenFile] = [:]
        var nextInode: UInt64 = CacheFileSystem.rootInode + 1
        var nextHandle: UInt64 = 1
        /// Problems already logged, so a damaged block or name is reported once, not on every read.
        var reported: Set<String> = []
    }

    /// Who may read the plaintext: the owner, group and permission bits every entry shows, instead of the
    /// ciphertext files' own (which say who may read the ciphertext, and under caid's `UMask=0077` are root's only).
    public struct Ownership: Sendable, Equatable {
        public var uid: uid_t
        public var gid: gid_t
        /// The permission bits of files; directories get these plus `x` wherever `r` is set, and so do files whose
        /// ciphertext is executable.
        public var fileMode: mode_t

        /// Root and its group may read; nobody else.
        public static let `default` = Ownership(uid: 0, gid: 0, fileMode: 0o440)

        public init(uid: uid_t, gid: gid_t, fileMode: mode_t) {
            self.uid = uid
            self.gid = gid
            self.fileMode = fileMode & 0o444
        }

        /// `info` with this owner and mode, its file type kept.
        func apply(to info: inout stat) {
            let type = info.st_mode & S_IFMT
            let searchable = type == S_IFDIR || (type == S_IFREG && info.st_mode & 0o111 != 0)
            var bits = fileMode
            if searchable { bits |= (fileMode >> 2) & 0o111 }
            if type == S_IFLNK { bits = 0o777 }
            info.st_mode = type | bits
            info.st_uid = uid
            info.st_gid = gid
        }
    }

    public let volume: Volume
    private let logger: Logger
    private let ownership: Ownership?
    private let arrival: (any CiphertextArrival)?
    /// Set when the mount stops: streamed reads fail at once instead of waiting.
    private let stopping = Atomic<Bool>(false)
    private let tables = Mutex(Tables())

    /// - Parameters:
    ///   - ownership: the owner and modes to show; nil shows the ciphertext files' own (`caid mount`'s default,
    ///     like gocryptfs).
    ///   - arrival: for a mount of a model still downloading: reads wait there for their ciphertext.
    public init(volume: Volume, ownership: Ownership? = nil, arrival: (any CiphertextArrival)? = nil, logger: Logger) throws(GocryptfsError) {
        self.volume = volume
        self.arrival = arrival
        self.logger = logger
        self.ownership = ownership
        var info = stat()
        guard lstat(volume.root, &info) == 0 else { throw GocryptfsError(.io, "\(volume.root) cannot be read") }
        ownership?.apply(to: &info)
        info.st_ino = UInt(Self.rootInode)
        let root = Node(inode: Self.rootInode, cipherPath: "", attributes: info)
        tables.withLock { $0.nodes[Self.rootInode] = root }
    }

    /// Makes streamed reads fail now rather than wait for bytes (the mount is stopping).
    public func stopWaiting() {
        stopping.store(true, ordering: .relaxed)
        arrival?.releaseWaitingReads()
    }

    /// Forgets open files (on unmount); the volume keys go with the last reference to the volume.
    public func close() {
        tables.withLock { $0.files.removeAll() }
    }

    // MARK: Operations

    /// The node for an inode.
    public func node(_ inode: UInt64) -> Node? {
        tables.withLock { $0.nodes[inode] }
    }

    /// Looks up `name` in directory `parent`.
    public func lookup(parent: UInt64, name: [UInt8]) -> Result<Node, Errno> {
        if let known = tables.withLock({ state in state.children[ChildKey(parent: parent, name: name)].flatMap { state.nodes[$0] } }) {
            return .success(known)
        }
        guard let directory = node(parent) else { return .failure(.init(ENOENT)) }
        guard directory.attributes.st_mode & S_IFMT == S_IFDIR else { return .failure(.init(ENOTDIR)) }
        guard name.count <= 255 else { return .failure(.init(ENAMETOOLONG)) }
        let iv: [UInt8]
        switch directoryIV(directory) {
        case .success(let value): iv = value
        case .failure(let error): return .failure(error)
        }
        guard let disk = try? volume.names.diskName(for: name, iv: iv) else { return .failure(.init(ENOENT)) }
        return makeNode(parent: directory, name: name, diskName: disk.entry)
    }

    /// The entries of a directory, damaged names skipped (and logged once).
    public func list(_ inode: UInt64) -> Result<[DirectoryEntry], Errno> {
        if let cached = tables.withLock({ $0.listings[inode] }) { return .success(cached) }
        guard let directory = node(inode) else { return .failure(.init(ENOENT)) }
        guard directory.attributes.st_mode & S_IFMT == S_IFDIR else { return .failure(.init(ENOTDIR)) }
        let listing: (entries: [Volume.Entry], skipped: [String])
        do {
            listing = try volume.list(directory.cipherPath)
        } catch {
            reportOnce("list:\(directory.cipherPath)", "cannot list directory: \(error)")
            return .failure(.init(EIO))
        }
        for skipped in listing.skipped {
            reportOnce("name:" + skipped, "invalid entry skipped: \(skipped)")
        }
        var entries: [DirectoryEntry] = []
        for entry in listing.entries {
            if case .success(let node) = makeNode(parent: directory, name: entry.name, diskName: entry.diskName) {
                entries.append(DirectoryEntry(name: entry.name, node: node))
            }
        }
        tables.withLock { $0.listings[inode] = entries }
        return .success(entries)
    }

    /// The decrypted target of a symlink.
    public func readLink(_ inode: UInt64) -> Result<[UInt8], Errno> {
        guard let link = node(inode) else { return .failure(.init(ENOENT)) }
        guard link.attributes.st_mode & S_IFMT == S_IFLNK else { return .failure(.init(EINVAL)) }
        do {
            return .success(try volume.readLink(link.cipherPath))
        } catch {
            reportOnce("link:\(link.cipherPath)", "\(error)")
            return .failure(.init(EIO))
        }
    }

    /// An open file: its handle for ``read(handle:offset:count:)``, and whether the kernel may keep the plaintext it
    /// cached from earlier opens (not for a file streamed in this mount's life: a copy that fails its final check is
    /// replaced, and what was cached from it must go).
    public struct Opened: Sendable, Equatable {
        public var handle: UInt64
        public var keepCache: Bool
    }

    /// Opens a file for reading.
    public func open(_ inode: UInt64) -> Result<Opened, Errno> {
        guard let file = node(inode) else { return .failure(.init(ENOENT)) }
        guard file.attributes.st_mode & S_IFMT == S_IFREG else { return .failure(.init(EISDIR)) }
        // A streamed file's header (its file ID) is read at open: it must be there first.
        let generation = arrival?.generation(of: file.cipherPath)
        if generation != nil, stopping.load(ordering: .relaxed) { return .failure(.init(EIO)) }
        if let arrival, let generation, let reason = arrival.waitForCiphertext(file.cipherPath, range: 0..<UInt64(ContentCipher.headerSize), generation: generation) {
            reportOnce("open:\(file.cipherPath):\(generation)", "cannot open \(file.cipherPath): \(reason)")
            return .failure(.init(EIO))
        }
        do {
            let opened = OpenFile(file: try volume.openFile(file.cipherPath), cipherPath: file.cipherPath, generation: generation)
            let handle = tables.withLock { state in
                defer { state.nextHandle += 1 }
                state.files[state.nextHandle] = opened
                return state.nextHandle
            }
            return .success(Opened(handle: handle, keepCache: generation == nil))
        } catch {
            reportOnce("open:\(file.cipherPath)", "\(error)")
            return .failure(.init(EIO))
        }
    }

    /// Reads plaintext; a block that does not verify gives EIO (logged once per block), never its bytes. A streamed
    /// file's read first waits for the ciphertext under it.
    public func read(handle: UInt64, offset: UInt64, count: Int) -> Result<[UInt8], Errno> {
        guard let open = tables.withLock({ $0.files[handle] }) else { return .failure(.init(EBADF)) }
        if let arrival, let generation = open.generation {
            guard !stopping.load(ordering: .relaxed) else { return .failure(.init(EIO)) }
            let range = open.file.cipherRange(offset: offset, count: count)
            if let reason = arrival.waitForCiphertext(open.cipherPath, range: range, generation: generation) {
                reportOnce("wait:\(open.cipherPath):\(generation)", "read of \(open.cipherPath) failed: \(reason)")
                return .failure(.init(EIO))
            }
        }
        do {
            return .success(try open.file.read(offset: offset, count: count))
        } catch {
            reportOnce("read:\(error.message)", "read failed: \(error)")
            return .failure(.init(EIO))
        }
    }

    /// Closes a handle.
    public func release(handle: UInt64) {
        _ = tables.withLock { $0.files.removeValue(forKey: handle) }
    }

    // MARK: Helpers

    private func directoryIV(_ directory: Node) -> Result<[UInt8], Errno> {
        if let iv = tables.withLock({ $0.ivs[directory.inode] }) { return .success(iv) }
        do {
            let iv = try volume.directoryIV(directory.cipherPath)
            tables.withLock { $0.ivs[directory.inode] = iv }
            return .success(iv)
        } catch {
            reportOnce("iv:\(directory.cipherPath)", "\(error)")
            return .failure(.init(EIO))
        }
    }

    private func makeNode(parent: Node, name: [UInt8], diskName: String) -> Result<Node, Errno> {
        let key = ChildKey(parent: parent.inode, name: name)
        let cipherPath = parent.cipherPath.isEmpty ? diskName : parent.cipherPath + "/" + diskName
        var info = stat()
        guard lstat(volume.path(cipherPath), &info) == 0 else { return .failure(.init(errno == ENOENT ? ENOENT : EIO)) }
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            info.st_size = off_t(ContentCipher.plainSize(cipherSize: UInt64(info.st_size)))
        case S_IFLNK:
            guard let target = try? volume.readLink(cipherPath) else {
                reportOnce("link:\(cipherPath)", "\(volume.path(cipherPath)): symlink target does not decrypt; entry hidden")
                return .failure(.init(EIO))
            }
            info.st_size = off_t(target.count)
        case S_IFDIR:
            break
        default:
            return .failure(.init(ENOENT))
        }
        info.st_blocks = (info.st_size + 511) / 512
        ownership?.apply(to: &info)
        return .success(tables.withLock { state in
            if let existing = state.children[key], let node = state.nodes[existing] { return node }
            let inode = state.nextInode
            state.nextInode += 1
            info.st_ino = UInt(inode)
            let node = Node(inode: inode, cipherPath: cipherPath, attributes: info)
            state.nodes[inode] = node
            state.children[key] = inode
            return node
        })
    }

    private func reportOnce(_ key: String, _ message: String) {
        let first = tables.withLock { $0.reported.insert(key).inserted }
        if first { logger.warning("\(message)") }
    }
}

/// An errno value as a Swift error.
public struct Errno: Error, Sendable, Equatable {
    public var code: Int32
    public init(_ code: Int32) { self.code = code }
}
