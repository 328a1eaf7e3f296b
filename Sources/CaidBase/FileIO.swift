#if canImport(Glibc)
import Glibc
#endif

/// The positioned read and write loops over a file descriptor, written once: a signal's EINTR is retried and a short
/// count is continued, so callers see only "all of it", "the end of the file" or an errno.
public enum FileIO {
    /// A read or write that failed, with its errno.
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public var code: Int32
        public var description: String { String(cString: strerror(code)) }
        /// The disk (or the quota) is full: the caller can say how much room is missing.
        public var isNoSpace: Bool { code == ENOSPC || code == EDQUOT }
    }

    /// Reads into `buffer` from `offset` until it is full or the file ends.
    /// - Returns: the bytes read: `buffer.count`, or fewer at the end of the file.
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(Failure) -> Int {
        try fill(buffer) { base, count, done in pread(fd, base, count, off_t(offset) + off_t(done)) }
    }

    /// Reads into `buffer` from where `fd` stands (a pipe or a FIFO too, such as `--passfile <(…)`) until it is full
    /// or the input ends. - Returns: the bytes read.
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(Failure) -> Int {
        try fill(buffer) { base, count, _ in Glibc.read(fd, base, count) }
    }

    /// The loop both reads share: `call(base, count, done)` reads at most `count` bytes into `base`.
    private static func fill(_ buffer: UnsafeMutableRawBufferPointer, _ call: (UnsafeMutableRawPointer, Int, Int) -> Int) throws(Failure) -> Int {
        guard let base = buffer.baseAddress else { return 0 }
        var done = 0
        while done < buffer.count {
            let n = call(base + done, buffer.count - done, done)
            if n < 0, errno == EINTR { continue }
            guard n >= 0 else { throw Failure(code: errno) }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Writes all of `bytes` at `offset`.
    public static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws(Failure) {
        guard let base = bytes.baseAddress else { return }
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, base + done, bytes.count - done, off_t(offset) + off_t(done))
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw Failure(code: n == 0 ? EIO : errno) }
            done += n
        }
    }
}
