import CGNU
import Foundation

/// Runs blocking work off Swift's cooperative pool: an `fsync`, a hash over a whole file, a child process to wait for,
/// a TEE report. The pool has one thread per core (two on the test machine), and everything async shares them; a
/// call that blocks one for seconds stalls the supervisor, health and every other service meanwhile.
///
/// Each call gets a thread of its own. The calls that come here are few and long (per object, per handshake, per
/// rule check), so a thread each costs nothing that matters and never queues one behind another.
public enum Blocking {
    /// The kernel's name of the threads that run blocking work.
    public static let threadName = "caid-blocking"

    /// Runs `body` on a new thread and returns its result. Not cancellable: `body` runs to its end.
    public static func run<T: Sendable, E: Error>(_ body: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
        let result: Result<T, E> = await withCheckedContinuation { continuation in
            Thread {
                // Named from inside, by the kernel's name (what `top` and `perf` show): Linux gives a new thread its
                // creator's name, Foundation applies a name set before `start()` to the object only, and setting
                // `Thread.current.name` here did not always reach the kernel under load.
                _ = caid_set_thread_name(Blocking.threadName)
                continuation.resume(returning: Result { () throws(E) in try body() })
            }.start()
        }
        return try result.get()
    }
}
