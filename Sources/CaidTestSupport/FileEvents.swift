import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Waits for a state that shows in files (a peer's "listening" line in its stdout, a checkpoint a download writes)
/// as an event: `inotify` wakes the wait when a file in the watched directories changes, instead of a poll.
public enum FileEvents {
    public struct Timeout: Error, CustomStringConvertible {
        public var description: String
    }

    /// Returns the first non-nil value of `check`, which is evaluated now and again after every change to a file
    /// in `directories` (evaluated before each check: a directory that does not exist yet is watched once it does,
    /// so watch its parent too, to notice that). Throws ``Timeout`` after `timeout`, and whatever `check` throws (say, that the peer exited).
    /// The wait blocks a thread of its own, not the cooperative pool.
    public static func wait<T: Sendable>(
        in directories: @escaping @Sendable () -> [String], timeout: Duration = .seconds(30), what: String,
        until check: @escaping @Sendable () throws -> T?
    ) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            Thread.detachNewThread {
                continuation.resume(with: Result { try blockingWait(in: directories, timeout: timeout, what: what, until: check) })
            }
        }
    }

    /// ``wait(in:timeout:what:until:)`` for a line of `process`'s stdout (stdout and stderr live in the temporary
    /// directory); throws if the process exits without printing one.
    public static func line<T: Sendable>(
        of process: Programs.Running, timeout: Duration = .seconds(30), what: String,
        _ parse: @escaping @Sendable (Substring) -> T?
    ) async throws -> T {
        try await wait(in: { [NSTemporaryDirectory()] }, timeout: timeout, what: what) {
            if let value = process.stdout.split(separator: "\n").lazy.compactMap(parse).first { return value }
            if let result = process.exited() { throw Timeout(description: "\(what): the process exited \(result.status): \(result.stderr)") }
            return nil
        }
    }

    private static func blockingWait<T>(
        in directories: () -> [String], timeout: Duration, what: String, until check: () throws -> T?
    ) throws -> T {
        let fd = inotify_init1(Int32(IN_CLOEXEC))
        guard fd >= 0 else { throw Timeout(description: "\(what): inotify_init1: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let mask = UInt32(IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE)
        let deadline = ContinuousClock.now + timeout
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            // Watch first, then look: a change between the two still wakes the next poll.
            for directory in directories() { _ = inotify_add_watch(fd, directory, mask) }
            if let value = try check() { return value }
            let left = ContinuousClock.now.duration(to: deadline)
            guard left > .zero else { throw Timeout(description: "\(what): not within \(timeout)") }
            var events = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let milliseconds = Int32(clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
            if poll(&events, 1, milliseconds) > 0 { _ = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }
        }
    }
}
