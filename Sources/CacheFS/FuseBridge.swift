import CFuse3
import Foundation
import Gocryptfs

#if canImport(Glibc)
import Glibc
#endif

/// The one bridge between libfuse's C callbacks and Swift.
///
/// libfuse calls these functions on its worker threads. They cannot capture, so each finds the ``CacheFileSystem``
/// through `fuse_req_userdata(req)` (an unretained pointer the ``FuseMount`` keeps alive for the session's life),
/// calls it synchronously, and replies before returning. Nothing here awaits or blocks on Swift concurrency, so a
/// busy FUSE thread never starves the cooperative pool, and the file system's own locks keep it thread-safe.
enum FuseBridge {
    /// Attributes and entries never change while mounted: let the kernel keep them for an hour.
    static let timeout: Double = 3600

    static func fileSystem(_ req: fuse_req_t?) -> CacheFileSystem {
        Unmanaged<CacheFileSystem>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    static func entry(_ node: CacheFileSystem.Node) -> fuse_entry_param {
        var entry = fuse_entry_param()
        entry.ino = node.inode
        entry.generation = 1
        entry.attr = node.attributes
        entry.attr_timeout = timeout
        entry.entry_timeout = timeout
        return entry
    }

    static func operations() -> fuse_lowlevel_ops {
        var ops = fuse_lowlevel_ops()
        ops.`init` = { _, conn in
            guard let conn else { return }
            // Ask for the largest readahead the kernel allows; reads are served from whole decrypted blocks.
            conn.pointee.max_readahead = UInt32.max
            conn.pointee.want |= UInt32(FUSE_CAP_ASYNC_READ)
        }
        ops.lookup = { req, parent, name in
            guard let name else { fuse_reply_err(req, EINVAL); return }
            switch FuseBridge.fileSystem(req).lookup(parent: parent, name: Array(UnsafeBufferPointer(start: UnsafeRawPointer(name).assumingMemoryBound(to: UInt8.self), count: strlen(name)))) {
            case .success(let node):
                var reply = FuseBridge.entry(node)
                fuse_reply_entry(req, &reply)
            case .failure(let error):
                fuse_reply_err(req, error.code)
            }
        }
        ops.getattr = { req, ino, _ in
            guard var attributes = FuseBridge.fileSystem(req).node(ino)?.attributes else { fuse_reply_err(req, ENOENT); return }
            fuse_reply_attr(req, &attributes, FuseBridge.timeout)
        }
        ops.readlink = { req, ino in
            switch FuseBridge.fileSystem(req).readLink(ino) {
            case .success(let target):
                (target + [0]).withUnsafeBufferPointer { pointer in
                    pointer.withMemoryRebound(to: CChar.self) { _ = fuse_reply_readlink(req, $0.baseAddress) }
                }
            case .failure(let error):
                fuse_reply_err(req, error.code)
            }
        }
        ops.open = { req, ino, fi in
            guard let fi else { fuse_reply_err(req, EINVAL); return }
            guard fi.pointee.flags & O_ACCMODE == O_RDONLY else { fuse_reply_err(req, EROFS); return }
            switch FuseBridge.fileSystem(req).open(ino) {
            case .success(let opened):
                fi.pointee.fh = opened.handle
                // The plaintext never changes while mounted: keep the page cache across opens (but see Opened).
                fi.pointee.keep_cache = opened.keepCache ? 1 : 0
                fuse_reply_open(req, fi)
            case .failure(let error):
                fuse_reply_err(req, error.code)
            }
        }
        ops.read = { req, _, size, offset, fi in
            guard let fi else { fuse_reply_err(req, EINVAL); return }
            switch FuseBridge.fileSystem(req).read(handle: fi.pointee.fh, offset: UInt64(max(0, offset)), count: size) {
            case .success(let bytes):
                bytes.withUnsafeBytes { _ = fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count) }
            case .failure(let error):
                fuse_reply_err(req, error.code)
            }
        }
        ops.release = { req, _, fi in
            if let fi { FuseBridge.fileSystem(req).release(handle: fi.pointee.fh) }
            fuse_reply_err(req, 0)
        }
        ops.opendir = { req, ino, fi in
            guard let fi else { fuse_reply_err(req, EINVAL); return }
            guard FuseBridge.fileSystem(req).node(ino) != nil else { fuse_reply_err(req, ENOENT); return }
            fi.pointee.keep_cache = 1
            fi.pointee.cache_readdir = 1
            fuse_reply_open(req, fi)
        }
        ops.readdir = { req, ino, size, offset, _ in
            FuseBridge.replyDirectory(req, ino, size, offset, plus: false)
        }
        ops.readdirplus = { req, ino, size, offset, _ in
            FuseBridge.replyDirectory(req, ino, size, offset, plus: true)
        }
        ops.releasedir = { req, _, _ in
            fuse_reply_err(req, 0)
        }
        ops.statfs = { req, _ in
            var info = statvfs()
            guard statvfs(FuseBridge.fileSystem(req).volume.root, &info) == 0 else { fuse_reply_err(req, errno); return }
            info.f_namemax = 255
            fuse_reply_statfs(req, &info)
        }
        ops.getxattr = { req, _, _, _ in
            fuse_reply_err(req, ENODATA)
        }
        ops.listxattr = { req, _, size in
            if size == 0 { fuse_reply_xattr(req, 0) } else { fuse_reply_buf(req, nil, 0) }
        }
        ops.access = { req, _, mask in
            fuse_reply_err(req, mask & W_OK != 0 ? EROFS : 0)
        }
        return ops
    }

    /// Fills one readdir reply from the cached listing: ".", "..", then the entries, starting after `offset`.
    static func replyDirectory(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ offset: off_t, plus: Bool) {
        let fs = fileSystem(req)
        guard let directory = fs.node(ino) else { fuse_reply_err(req, ENOENT); return }
        let entries: [CacheFileSystem.DirectoryEntry]
        switch fs.list(ino) {
        case .success(let list): entries = list
        case .failure(let error): fuse_reply_err(req, error.code); return
        }
        var dot = directory
        dot.inode = 0  // "." and ".." are not looked up by the kernel
        let all = [(name: Array(".".utf8), node: dot), (name: Array("..".utf8), node: dot)] + entries.map { ($0.name, $0.node) }
        var buffer = [CChar](repeating: 0, count: size)
        var used = 0
        var index = Int(offset)
        while index < all.count {
            let (name, node) = all[index]
            let cName = name.map { CChar(bitPattern: $0) } + [0]
            let needed = buffer.withUnsafeMutableBufferPointer { out -> Int in
                cName.withUnsafeBufferPointer { namePointer in
                    if plus {
                        var reply = entry(node)
                        if node.inode == 0 { reply.ino = 0 }
                        return fuse_add_direntry_plus(req, out.baseAddress! + used, size - used, namePointer.baseAddress, &reply, off_t(index + 1))
                    }
                    var attributes = node.attributes
                    return fuse_add_direntry(req, out.baseAddress! + used, size - used, namePointer.baseAddress, &attributes, off_t(index + 1))
                }
            }
            if needed > size - used { break }
            used += needed
            index += 1
        }
        buffer.withUnsafeBufferPointer { _ = fuse_reply_buf(req, $0.baseAddress, used) }
    }
}
