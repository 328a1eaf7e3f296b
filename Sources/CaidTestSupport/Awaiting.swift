import Foundation
import Glibc

/// Waits for events instead of sleeping: a wait checks its condition, then blocks until something it names changes
/// (a file is written, an entry appears in a directory, the mount table changes, a descriptor becomes readable) and
/// checks again, until the condition holds or the deadline passes.
///
/// Each blocking step runs `poll(2)` on a thread of its own, so that no thread of the cooperative pool is held; a
/// cancelled task wakes it through a socket pair. Every descriptor a wait opens is closed when it returns or throws.
public enum Awaiting {
    /// A wait whose deadline passed before its condition held.
    public struct TimedOut: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    /// What wakes a wait to check its condition again.
    public enum Source: Sendable {
        /// The file (which must exist) was written to, or closed after writing: a process's output, a log.
        case file(String)
        /// An entry was created in, or renamed into, the directory: a port file put in place, a socket bound.
        case directory(String)
        /// This process's mount table changed: a mount or an unmount (`poll(2)` on /proc/self/mountinfo).
        case mounts
        /// The descriptor is readable or hung up. The caller owns it, keeps it open during the wait, and consumes
        /// what it reads in the condition (it is level-triggered).
        case readable(Int32)
    }

    /// Returns the first non-nil value of `condition`, evaluated now and after every event from `sources`; throws
    /// ``TimedOut`` (naming `what`) when `timeout` passes first, `CancellationError` when the task is cancelled, or
    /// what `condition` throws.
    public static func until<T>(
        _ what: @autoclosure () -> String, timeout: Duration, on sources: [Source], _ condition: () throws -> T?
    ) async throws -> T {
        let watch = try Watch(sources)
        defer { watch.close() }
        let deadline = ContinuousClock.now + timeout
        while true {
            // The watches are in place before the first check: an event between a check and the poll is not lost.
            if let value = try condition() { return value }
            try Task.checkCancellation()
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw TimedOut(description: "\(what()) did not happen within \(timeout)") }
            await watch.next(within: left)
        }
    }

    /// The first element of `stream` that `predicate` accepts, or nil when `timeout` passes first, the stream ends,
    /// or the task is cancelled.
    public static func first<T: Sendable>(
        of stream: AsyncStream<T>, timeout: Duration, where predicate: @escaping @Sendable (T) -> Bool
    ) async -> T? {
        await withTaskGroup(of: T?.self) { group in
            group.addTask {
                for await element in stream where predicate(element) { return element }
                return nil
            }
            group.addTask {
                // The deadline, not a wait for a state: cancelled as soon as the stream delivers.
                try? await Task.sleep(for: timeout)
                return nil
            }
            let found = await group.next() ?? nil
            group.cancelAll()
            return found
        }
    }

    /// Suspends until the task is cancelled.
    public static func cancellation() async {
        let (stream, continuation) = AsyncStream.makeStream(of: Never.self)
        // The iteration ends when the task is cancelled; the stream itself never yields nor finishes before.
        for await _ in stream {}
        continuation.finish()
    }

    /// The descriptors of one wait: an inotify instance for the file and directory sources, /proc/self/mountinfo
    /// for the mount table, the caller's descriptors, and a socket pair a cancellation writes to.
    final class Watch: @unchecked Sendable {
        private var descriptors: [pollfd] = []
        private var owned: [Int32] = []
        private var inotify: Int32 = -1
        private let wakeRead: Int32
        private let wakeWrite: Int32

        init(_ sources: [Source]) throws {
            var ends: [Int32] = [-1, -1]
            // A socket pair, not a pipe: close-on-exec from the start (pipe2 is not in Swift's Glibc), so that no
            // child spawned meanwhile by another thread inherits it.
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue | SOCK_NONBLOCK.rawValue), 0, &ends) == 0 else {
                throw Self.failure("socketpair")
            }
            wakeRead = ends[0]
            wakeWrite = ends[1]
            owned = [wakeRead, wakeWrite]
            descriptors.append(pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0))
            do {
                for source in sources {
                    switch source {
                    case .file(let path):
                        try watch(path, mask: UInt32(IN_MODIFY | IN_CLOSE_WRITE))
                    case .directory(let path):
                        try watch(path, mask: UInt32(IN_CREATE | IN_MOVED_TO | IN_ONLYDIR))
                    case .mounts:
                        let fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC)
                        guard fd >= 0 else { throw Self.failure("open /proc/self/mountinfo") }
                        owned.append(fd)
                        // The kernel reports POLLERR|POLLPRI once per change of the table after the open.
                        descriptors.append(pollfd(fd: fd, events: Int16(POLLPRI), revents: 0))
                    case .readable(let fd):
                        descriptors.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
                    }
                }
            } catch {
                close()
                throw error
            }
        }

        private func watch(_ path: String, mask: UInt32) throws {
            if inotify < 0 {
                inotify = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
                guard inotify >= 0 else { throw Self.failure("inotify_init1") }
                owned.append(inotify)
                descriptors.append(pollfd(fd: inotify, events: Int16(POLLIN), revents: 0))
            }
            guard inotify_add_watch(inotify, path, mask) >= 0 else { throw Self.failure("inotify_add_watch \(path)") }
        }

        private static func failure(_ call: String) -> TimedOut {
            TimedOut(description: "cannot wait: \(call): \(String(cString: strerror(errno)))")
        }

        /// Blocks (on a thread of its own) until an event, the deadline or a cancellation.
        func next(within left: Duration) async {
            let milliseconds = Int32(clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
            let descriptors = self.descriptors
            let inotify = self.inotify
            let wakeWrite = self.wakeWrite
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let thread = Thread {
                        var polled = descriptors
                        _ = poll(&polled, nfds_t(polled.count), milliseconds)
                        // Inotify's queue is read empty, so that the next poll blocks until a new event.
                        if inotify >= 0 {
                            var buffer = [UInt8](repeating: 0, count: 4096)
                            while buffer.withUnsafeMutableBytes({ read(inotify, $0.baseAddress, $0.count) }) > 0 {}
                        }
                        continuation.resume()
                    }
                    thread.name = "caid-test-await"
                    thread.start()
                }
            } onCancel: {
                // Stays readable: every later poll of this wait returns at once, and the loop sees the cancellation.
                var byte: UInt8 = 1
                _ = write(wakeWrite, &byte, 1)
            }
        }

        func close() {
            for fd in owned { _ = Glibc.close(fd) }
            owned = []
        }
    }
}
