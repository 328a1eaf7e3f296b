import CaidBase
import Foundation
import OSSProtocol
import Synchronization

/// The ``StreamingLedger`` of one `caid run`, shared by the fetcher's tasks, its urgent lane and the mount's FUSE
/// threads. It outlives any one fetch: a fetch that fails and starts again finds the parts and readers it left.
///
/// FUSE threads block in ``waitForCiphertext(_:range:generation:)``: they are libfuse's own threads, not the
/// cooperative pool's, so a condition variable is the right tool there. The async side never blocks on it.
public final class StreamingDownload: @unchecked Sendable {
    // `ledger` is guarded by `condition`'s lock; every change broadcasts.
    private let condition = NSCondition()
    private var ledger = StreamingLedger()
    private var releases: UInt64 = 0
    private let doorbell = Doorbell()
    private let runs = Mutex((running: 0, finished: false))
    private let laneSlots = Mutex(0)
    /// Fetch tasks waiting for the urgent lane to finish a copy's parts; guarded by `condition`'s lock too.
    private var settleWaiters: [UInt64: (path: String, generation: UInt64, continuation: CheckedContinuation<Void, Never>)] = [:]
    private var nextSettleWaiter: UInt64 = 0
    /// The longest a read waits for its bytes (`CAID_MOUNT_READ_TIMEOUT`); then it gets EIO.
    public let readTimeout: Duration

    public init(readTimeout: Duration = .seconds(120)) {
        self.readTimeout = readTimeout
    }

    /// A change: waiting readers look again, and fetch tasks waiting for a copy to settle are resumed if it has.
    private func locked<T>(_ body: (inout StreamingLedger) -> T) -> T {
        condition.lock()
        let result = body(&ledger)
        var settled: [CheckedContinuation<Void, Never>] = []
        for (id, waiter) in settleWaiters where ledger.fetching(waiter.path, generation: waiter.generation) == 0 {
            settleWaiters[id] = nil
            settled.append(waiter.continuation)
        }
        condition.broadcast()
        condition.unlock()
        for continuation in settled { continuation.resume() }
        return result
    }

    /// A look that changes nothing, so wakes no one.
    private func reading<T>(_ body: (StreamingLedger) -> T) -> T {
        condition.lock()
        defer { condition.unlock() }
        return body(ledger)
    }

    /// Blocks the calling (FUSE) thread until ciphertext bytes `range` of the copy `generation` of `path` are on
    /// disk, asking for the parts first. - Returns: nil when they may be read, else why not (the read gets EIO).
    public func waitForCiphertext(_ path: String, range: Range<UInt64>, generation: UInt64) -> String? {
        let deadline = Date() + TimeInterval(readTimeout.components.seconds) + TimeInterval(readTimeout.components.attoseconds) / 1e18
        condition.lock()
        defer { condition.unlock() }
        var since: UInt64?
        var counted = false
        let release = releases
        defer {
            if counted { ledger.waitingReads -= 1 }
        }
        while true {
            if releases != release { return "the mount is stopping" }
            switch ledger.need(path, range: range, generation: generation, since: &since) {
            case .ready:
                return nil
            case .unavailable(let reason):
                return reason
            case .wait(let requested):
                if requested { doorbell.ring() }
                if !counted {
                    counted = true
                    ledger.waitingReads += 1
                }
                if !condition.wait(until: deadline), Date() >= deadline {
                    if case .ready = ledger.need(path, range: range, generation: generation, since: &since) { return nil }
                    return "\(path): its bytes \(range.lowerBound)-\(range.upperBound - 1) did not arrive within \(readTimeout.formatted) (CAID_MOUNT_READ_TIMEOUT)"
                }
            }
        }
    }

    /// The generation of `path`'s current copy; nil for a file that is not streamed.
    public func generation(of path: String) -> UInt64? {
        reading { $0.generation(of: path) }
    }

    /// Ends the waits under way now: they return that the mount is stopping.
    public func releaseWaitingReads() {
        locked { _ in releases += 1 }
    }

    public var progress: StreamingLedger.Progress {
        reading { $0.progress }
    }

    /// Whether a fetch ran to its end (every object verified, the cache reconciled) and none runs now: only then
    /// may the cache be checked as a whole against the fetch's manifest.
    public var isFinished: Bool {
        runs.withLock { $0.running == 0 && $0.finished }
    }

    func runStarted() {
        runs.withLock { $0 = (running: $0.running + 1, finished: false) }
    }

    func runEnded(complete: Bool) {
        runs.withLock { $0 = (running: $0.running - 1, finished: complete) }
    }

    // MARK: The fetcher's side

    func stream(path: String, object: ObjectSummary, partSize: UInt64, stagingPath: String, file: UInt64, present: [Int: UInt64]) -> UInt64 {
        locked { $0.stream(path: path, object: object, partSize: partSize, stagingPath: stagingPath, file: file, present: present) }
    }

    func streamingFile(_ path: String, object: ObjectSummary) -> UInt64? {
        reading { $0.streamingFile(path, object: object) }
    }

    func claimNext(_ path: String, generation: UInt64) -> StreamingLedger.Request? {
        locked { $0.claimNext(path, generation: generation) }
    }

    func claimUrgent() -> StreamingLedger.Request? {
        locked { $0.claimUrgent() }
    }

    /// Returns once no part of the copy is being fetched by the urgent lane (each ends in ``partArrived`` or
    /// ``partFailed``), or the task is cancelled: then the fetch may take stock of what is present.
    func settled(_ path: String, generation: UInt64) async {
        let id = condition.withLock {
            defer { nextSettleWaiter += 1 }
            return nextSettleWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                condition.lock()
                guard !Task.isCancelled, ledger.fetching(path, generation: generation) > 0 else {
                    condition.unlock()
                    continuation.resume()
                    return
                }
                settleWaiters[id] = (path, generation, continuation)
                condition.unlock()
            }
        } onCancel: {
            condition.lock()
            let waiter = settleWaiters.removeValue(forKey: id)
            condition.unlock()
            waiter?.continuation.resume()
        }
    }

    /// How many fetch tasks wait in ``settled(_:generation:)`` (for tests).
    var settleWaiting: Int {
        condition.lock()
        defer { condition.unlock() }
        return settleWaiters.count
    }

    /// The object a reader last jumped to (``StreamingLedger/lastJumpedTo``).
    var lastJumpedTo: String? {
        reading { $0.lastJumpedTo }
    }

    func present(_ path: String, generation: UInt64) -> [Int: UInt64] {
        reading { $0.present(path, generation: generation) }
    }

    func partArrived(_ path: String, generation: UInt64, index: Int, crc: UInt64) {
        locked { $0.partArrived(path, generation: generation, index: index, crc: crc) }
    }

    func partFailed(_ path: String, generation: UInt64, index: Int, reason: String) {
        locked { $0.partFailed(path, generation: generation, index: index, reason: reason) }
    }

    func verified(_ path: String, generation: UInt64) {
        locked { $0.verified(path, generation: generation) }
    }

    func corrupt(_ path: String, generation: UInt64, reason: String) {
        locked { $0.corrupt(path, generation: generation, reason: reason) }
    }

    /// Takes one of the urgent lane's `count` slots, if one is free.
    func takeLaneSlot(of count: Int) -> Bool {
        laneSlots.withLock { used in
            guard used < count else { return false }
            used += 1
            return true
        }
    }

    /// Frees a slot. - Parameter wake: whether to wake the lane, which may have parts waiting for the slot (not when
    /// it gives back a slot it found no part for: that ring would have it look again at once, forever).
    func freeLaneSlot(wake: Bool) {
        laneSlots.withLock { $0 -= 1 }
        if wake { doorbell.ring() }
    }

    /// Returns once a reader asked for a part (at once if one did since the last call), or the task is cancelled.
    func urgentRequested() async {
        await doorbell.wait()
    }

    /// How often the lane woke (for tests: an idle lane must sleep, not spin).
    var laneWakeups: Int { doorbell.wakeups }

    /// Whether the lane is parked on its doorbell now (for tests: the event that it sleeps).
    var laneIsParked: Bool { doorbell.hasWaiter }
}

/// A bell that remembers one ring: ``wait()`` returns at once when it rang since the last wait, else at the next
/// ring or when the task is cancelled. The urgent lane's wake-up, the in-order download's start of the next object,
/// and ``CacheRepairs``.
final class Doorbell: Sendable {
    private struct State {
        var rung = false
        var waiter: CheckedContinuation<Void, Never>?
        var wakeups = 0
    }

    private let state = Mutex(State())

    func ring() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiter else {
                state.rung = true
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume()
    }

    var wakeups: Int { state.withLock { $0.wakeups } }

    /// Whether a task waits for the next ring now.
    var hasWaiter: Bool { state.withLock { $0.waiter != nil } }

    func wait() async {
        defer { state.withLock { $0.wakeups += 1 } }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let now = state.withLock { state -> Bool in
                    if state.rung || Task.isCancelled {
                        state.rung = false
                        return true
                    }
                    state.waiter = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            // Wakes the waiter without leaving a ring behind for the next wait.
            state.withLock { state in
                defer { state.waiter = nil }
                return state.waiter
            }?.resume()
        }
    }
}
