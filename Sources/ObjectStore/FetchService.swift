import CaidBase
import CaidCore
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// The `fetch` service of `caid run`: brings the cache up to date with the bucket, publishing progress, and then
/// stays `running` (the verified cache is what it provides) until stopped. A failure is retried by the supervisor;
/// a permanent OSS error (access denied, no such bucket, a bad signature) stops the retries with OSS's own words.
public struct FetchService: Service {
    private let fetcher: Fetcher
    private let handle: ServiceHandle
    private let repairs: CacheRepairs?
    private let identity: ModelIdentity?

    /// - Parameters:
    ///   - repairs: where the mount asks for the cache to be repaired; the service then fails, and the
    ///     supervisor's restart fetches again what was removed.
    ///   - identity: where the verified model's digest goes, for the measurement.
    public init(fetcher: Fetcher, handle: ServiceHandle, repairs: CacheRepairs? = nil, identity: ModelIdentity? = nil) {
        self.fetcher = fetcher
        self.handle = handle
        self.repairs = repairs
        self.identity = identity
    }

    public func run() async throws {
        guard fetcher.streams else { return try await fetchThenWait() }
        // A streaming mount reads while this downloads: its readers' parts are served throughout, and once the mount
        // may have started, a failed download is retried here, the service still running (the mount is up).
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await fetcher.serveWaitingReads() }
            group.addTask { try await fetchThenWait() }
            try await group.next()
            group.cancelAll()
        }
    }

    private func fetchThenWait() async throws {
        let summary = try await fetchRetryingOnceStreamable()
        let refused = summary.refused.isEmpty ? "" : "; \(summary.refused.count) listed objects refused, not in the mount: " + summary.refused.prefix(3).joined(separator: "; ")
        let model = summary.modelDigest.map { "; model \($0), every object checked against its manifest" } ?? "; no model manifest in the bucket"
        await identity?.publish(summary.modelDigest)
        await handle.running("\(summary.objects) objects verified (\(summary.downloaded) fetched, \(summary.skipped) already cached)" + model + refused)
        handle.logger.notice("model ciphertext verified: \(summary.objects) objects, \(summary.bytes) bytes fetched")
        // The cache is ready; nothing more to do until caid stops or the mount finds it damaged.
        if let repairs {
            await repairs.wait()
            if !Task.isCancelled { throw ServiceFailure("the mount found the cache changed after it was verified; fetching again") }
        }
        while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
    }

    /// One fetch; after it once became streamable (a mount may be reading), failures that may pass are retried here
    /// with the supervisor's backoff rather than thrown, so the service stays `running` under the mount.
    private func fetchRetryingOnceStreamable() async throws -> Fetcher.Summary {
        let streamable = Flag()
        var backoff = RestartPolicy.Backoff()
        while true {
            let started = ContinuousClock.now
            do {
                return try await fetchOnce(streamable: streamable)
            } catch {
                let permanent = (error as? FetchError)?.isPermanent ?? false
                guard streamable.isSet, !permanent, !Task.isCancelled else { throw error }
                let delay = backoff.failed(after: ContinuousClock.now - started, policy: RestartPolicy(), random: Double.random(in: 0..<1))
                handle.logger.warning("the download behind the streaming mount failed, retrying in \(delay.formatted): \(error)")
                await handle.retrying("download retrying in \(delay.formatted): \(error)")
                try await Task.sleep(for: delay)
            }
        }
    }

    private func fetchOnce(streamable: Flag) async throws -> Fetcher.Summary {
        let meter = ProgressLine()
        return try await fetcher.run(
            streamable: { listed in
                streamable.set()
                // A streaming mount may start: the model's identity is its manifest's, known before its bytes.
                await identity?.publish(listed.modelDigest)
                let model = listed.modelDigest.map { "; model \($0), each object checked against its manifest as it completes" } ?? ""
                await handle.running("\(listed.objects) objects listed, the small ones verified; the rest streams to the mount" + model)
                handle.logger.notice("model listed and its small files verified: the mount may start while the rest downloads")
            },
            progress: { done, total in
                if let line = meter.line(done: done, total: total) { await handle.progress(line) }
            })
    }
}

/// A flag set once, read from anywhere.
final class Flag: Sendable {
    private let value = Mutex(false)
    var isSet: Bool { value.withLock { $0 } }
    func set() { value.withLock { $0 = true } }
}

/// "412 MB of 6.1 GB (7%)" at most once a second, for the health detail.
final class ProgressLine: Sendable {
    private let throttle = Mutex(Throttle(interval: .seconds(1)))

    func line(done: UInt64, total: UInt64) -> String? {
        let due = throttle.withLock { $0.admits() }
        guard due || done == total else { return nil }
        let percent = total > 0 ? Int(Double(done) / Double(total) * 100) : 100
        return "\(done >> 20) MiB of \(total >> 20) MiB (\(percent)%)"
    }
}
