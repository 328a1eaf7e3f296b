import CaidControl
import CaidCore
import CaidTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The streaming mount (issue #18), end to end: `caid run` mounts a 48 MiB shard while the test OSS server serves it
/// slowly or badly, and readers read through the real FUSE mount.
@Suite(.serialized, .timeLimit(.minutes(4))) struct StreamingMountTests {
    static let shardMiB = 48

    /// A host with one large shard; its GETs of the shard take `delay` each.
    final class Setup: @unchecked Sendable {
        let host: ModelHost
        let plain: String
        let env: String
        let shardKey: String
        let mountedShard: String

        let delay: Int
        /// caid's notification socket: its STATUS= messages follow the health summary.
        let notify: NotifySocket

        init(delayMilliseconds: Int) async throws {
            delay = delayMilliseconds
            host = try await ModelHost()
            notify = try NotifySocket(path: host.dir.path + "/notify.sock")
            (plain, env, shardKey) = try host.addLargeModel("big", shardMiB: StreamingMountTests.shardMiB, extraSettings: "CAID_MOUNT_READ_TIMEOUT=60")
            mountedShard = host.mountpoint + "/model-00001-of-00001.safetensors"
            try faults([:])
        }

        /// Sets the OSS faults, the shard's delay always among them.
        func faults(_ more: [String: Any]) throws {
            var all = more
            all["delay_ms_by_key"] = [shardKey: delay]
            let data = try JSONSerialization.data(withJSONObject: all)
            try host.setOSSFaults(String(decoding: data, as: UTF8.self))
        }

        func health() -> HealthSnapshot? {
            guard let json = try? Programs.run(Programs.caid, ["health", "--json", "--socket", host.socket]) else { return nil }
            return try? HealthRoutes.decode(Data(json.stdout.utf8))
        }

        func cachefs(_ snapshot: HealthSnapshot?) -> ServiceStatus? {
            snapshot?.services.first { $0.name == "cachefs" }
        }

        /// Starts `caid run` and waits until the shard is mounted (its bytes need not be there).
        func start() async throws -> Programs.Running {
            let daemon = try Programs.start(Programs.caid, ["run", "--env", env], environment: Programs.environment(["NOTIFY_SOCKET": notify.path]))
            // The status summary names cachefs until it runs: its change wakes the check.
            do {
                _ = try await daemon.until("the mount", timeout: .seconds(60), notify: notify) { _, exited -> Bool? in
                    if let exited { throw PeerProcess.Failure(description: "caid run exited: \(exited.stderr)") }
                    return cachefs(health())?.state == .running ? true : nil
                }
            } catch {
                throw PeerProcess.Failure(description: "the mount did not come up: \(error) \(daemon.stderr)")
            }
            return daemon
        }

        /// Waits until `condition` holds for health, at most `seconds`, checking at each change caid announces.
        func wait(seconds: Int = 90, until condition: (HealthSnapshot) -> Bool) async throws -> HealthSnapshot? {
            let watch = try HealthWatch(socket: host.socket)
            return try? await watch.until("the health state", timeout: .seconds(seconds)) { condition($0) ? $0 : nil }
        }

        func stop(_ daemon: Programs.Running) async -> Programs.Result? {
            daemon.signal(SIGTERM)
            if let result = await daemon.wait(timeout: .seconds(30)) { return result }
            daemon.signal(SIGKILL)
            _ = daemon.wait()
            return nil
        }

        func expected(_ range: Range<Int>) throws -> Data {
            let handle = try #require(FileHandle(forReadingAtPath: plain + "/model-00001-of-00001.safetensors"))
            defer { try? handle.close() }
            try handle.seek(toOffset: UInt64(range.lowerBound))
            return handle.readData(ofLength: range.count)
        }

        func remove() { host.remove() }
    }

    /// What a reader got: the bytes it read in order, and the errno that stopped it (0 at the end of the file).
    struct ReadResult: Sendable {
        var bytes: Data
        var errno: Int32
    }

    /// Reads `count` bytes at `offset` of `path` (to its end when nil) in 1 MiB preads, on a thread of its own: the
    /// read blocks in the kernel while the mount waits for the bytes.
    static func read(_ path: String, offset: Int = 0, count: Int? = nil) async -> ReadResult {
        await withCheckedContinuation { continuation in
            Thread {
                let fd = open(path, O_RDONLY)
                guard fd >= 0 else { continuation.resume(returning: ReadResult(bytes: Data(), errno: errno)); return }
                defer { close(fd) }
                var out = Data()
                var buffer = [UInt8](repeating: 0, count: 1 << 20)
                var position = offset
                while count.map({ out.count < $0 }) ?? true {
                    let want = min(buffer.count, count.map { $0 - out.count } ?? buffer.count)
                    let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, want, off_t(position)) }
                    if n < 0 { continuation.resume(returning: ReadResult(bytes: out, errno: errno)); return }
                    if n == 0 { break }
                    out.append(contentsOf: buffer[0..<n])
                    position += n
                }
                continuation.resume(returning: ReadResult(bytes: out, errno: 0))
            }.start()
        }
    }

    /// A read of the shard that starts before its bytes have arrived waits for them and gets the right bytes; the
    /// mount shows the file at its full size at once. Then caid is stopped while another read waits for bytes that
    /// are slow to come: the read fails instead of hanging, caid exits cleanly and the mount is gone.
    @Test func aReadThatRacesTheDownloadGetsTheRightBytesAndAStopMidReadUnmounts() async throws {
        // Each GET of the shard takes 5 s: the mount and the first health probe come well before its bytes, even on a
        // loaded machine.
        let setup = try await Setup(delayMilliseconds: 5000)
        defer { setup.remove() }
        let daemon = try await setup.start()
        defer { if daemon.exited() == nil { daemon.signal(SIGKILL); _ = daemon.wait() } }

        let size = StreamingMountTests.shardMiB << 20
        var info = stat()
        #expect(stat(setup.mountedShard, &info) == 0 && Int(info.st_size) == size)
        let before = setup.cachefs(setup.health())?.streaming
        #expect(before.map { $0.localBytes < $0.totalBytes } == true, "the shard had all arrived before the read: \(String(describing: before))")
        let whole = await Self.read(setup.mountedShard)
        #expect(whole.errno == 0)
        #expect(whole.bytes == (try setup.expected(0..<size)), "the bytes read while the download ran are not the plaintext")
        let done = try await setup.wait { setup.cachefs($0)?.streaming?.complete == true && $0.modelLocal }
        #expect(done != nil, "the download did not complete")
        #expect(daemon.stderr.contains("verified big/"), "\(daemon.stderr)")

        // A second run from an empty cache, stopped while a read waits for bytes that take 20 s per request.
        let stopping = try await Setup(delayMilliseconds: 20_000)
        defer { stopping.remove() }
        let second = try await stopping.start()
        defer { if second.exited() == nil { second.signal(SIGKILL); _ = second.wait() } }
        async let stalled = Self.read(stopping.mountedShard, offset: 40 << 20, count: 1 << 20)
        let waiting = try await stopping.wait(seconds: 20) { (stopping.cachefs($0)?.streaming?.waitingReads ?? 0) > 0 }
        #expect(waiting != nil, "the read did not wait for its bytes")
        let started = ContinuousClock.now
        let result = await stopping.stop(second)
        #expect(result != nil && result?.status == 0, "caid did not stop cleanly: \(second.stderr)")
        let read = await stalled
        #expect(read.errno != 0 && read.bytes.isEmpty, "the waiting read got \(read.bytes.count) bytes, errno \(read.errno)")
        #expect(ContinuousClock.now - started < .seconds(25))
        #expect(!FuseMountPoint.isMounted(stopping.host.mountpoint), "the mount is still there after caid stopped")
    }

    /// Waits until `daemon` logs `text` once more than in `earlier` (its log so far).
    static func untilLogged(_ text: String, after earlier: String, by daemon: Programs.Running) async throws {
        let before = earlier.components(separatedBy: text).count
        _ = try await daemon.until("'\(text)' logged again", timeout: .seconds(90)) { _ -> Bool? in
            daemon.stderr.components(separatedBy: text).count > before ? true : nil
        }
    }

    /// A byte changed in transit in one block of the shard: reads of that block get EIO, never its bytes, and every
    /// byte before it is right. The object's CRC-64 then fails, it is fetched again (the change gone), and a reader
    /// that opens the file again reads it whole and right.
    @Test func aBlockChangedInTransitGivesEIONeverWrongBytesAndIsFetchedAgain() async throws {
        let setup = try await Setup(delayMilliseconds: 800)
        defer { setup.remove() }
        let changedAt = 20 << 20 + 12_345  // in part 2, well inside one 4 KiB block's ciphertext
        try setup.faults(["corrupt_ranges": [["key": setup.shardKey, "offset": changedAt]]])
        let daemon = try await setup.start()
        defer { if daemon.exited() == nil { daemon.signal(SIGKILL); _ = daemon.wait() } }

        let first = await Self.read(setup.mountedShard)
        #expect(first.errno == EIO, "read \(first.bytes.count) bytes, errno \(first.errno)")
        #expect(first.bytes.count < 20 << 20 + 4096, "the read went past the changed block")
        #expect(first.bytes == (try setup.expected(0..<first.bytes.count)), "bytes before the changed block are wrong")

        // The download's own check fails too; without the fault, the copy fetched again verifies.
        try setup.faults([:])
        let refetched = try await setup.wait { setup.cachefs($0)?.streaming?.complete == true }
        #expect(refetched != nil, "the shard was not fetched again: \(daemon.stderr)")
        #expect(daemon.stderr.contains("does not match OSS's"), "\(daemon.stderr)")
        let again = await Self.read(setup.mountedShard)
        #expect(again.errno == 0)
        #expect(again.bytes == (try setup.expected(0..<(StreamingMountTests.shardMiB << 20))))
        _ = await setup.stop(daemon)
    }

    /// Every GET reports a wrong CRC-64 (the bytes right) until the test lifts the fault: the mount serves blocks
    /// that authenticate, but once the copy a handle opened fails its check, that handle gets EIO for good; health
    /// names the object as fetched again, and once the fault is gone a new open reads the verified copy.
    @Test func aCopyWhoseFinalCRCDoesNotMatchTurnsToEIOAndIsFetchedAgain() async throws {
        let setup = try await Setup(delayMilliseconds: 600)
        defer { setup.remove() }
        try setup.faults(["wrong_crc_gets": [setup.shardKey: 1_000_000]])
        let daemon = try await setup.start()
        defer { if daemon.exited() == nil { daemon.signal(SIGKILL); _ = daemon.wait() } }
        let mismatch = "does not match OSS's"

        // A handle on a copy still arriving, whose first MiB reads right. A copy already refused opens as EIO until
        // the next one starts after the download's backoff. Each start of a copy logs "the mount may start" (health
        // lags by up to a second, too late to tell one copy from the next), so a try that got EIO waits for the next.
        let copyStarts = "the mount may start"
        var fd: Int32 = -1
        var head = Data()
        var tries: [String] = []
        for _ in 0..<10 where head.isEmpty {
            if fd >= 0 { close(fd) }
            let before = daemon.stderr
            fd = open(setup.mountedShard, O_RDONLY)
            let opened = fd
            let openErrno = errno
            let (data, readErrno) = await withCheckedContinuation { continuation in
                Thread {
                    var buffer = [UInt8](repeating: 0, count: 1 << 20)
                    let n = opened < 0 ? -1 : buffer.withUnsafeMutableBytes { pread(opened, $0.baseAddress, $0.count, 0) }
                    continuation.resume(returning: (n == buffer.count ? Data(buffer) : Data(), n < 0 ? errno : 0))
                }.start()
            }
            head = data
            tries.append(opened < 0 ? "open errno \(openErrno)" : "read errno \(readErrno), \(data.count) bytes")
            if head.isEmpty { try await Self.untilLogged(copyStarts, after: before, by: daemon) }
        }
        defer { if fd >= 0 { close(fd) } }
        #expect(head == (try setup.expected(0..<(1 << 20))), "tries: \(tries); \(daemon.stderr.suffix(4000))")
        // Every copy fails while the fault lasts: one failing after the open means the handle's copy has failed.
        let failed: Void? = try? await Self.untilLogged(mismatch, after: daemon.stderr, by: daemon)
        #expect(failed != nil, "no copy failed its check: \(daemon.stderr)")
        let refetching = try await setup.wait { !(setup.cachefs($0)?.streaming?.refetching.isEmpty ?? true) }
        #expect(setup.cachefs(refetching)?.streaming?.refetching == [setup.shardKey], "health did not name the object fetched again")

        try setup.faults([:])
        let done = try await setup.wait { setup.cachefs($0)?.streaming?.complete == true }
        #expect(done != nil, "the shard was not fetched again: \(daemon.stderr)")
        // The handle opened on a copy that failed stays refused; a new open reads the verified copy.
        var buffer = [UInt8](repeating: 0, count: 4096)
        let stale = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(30 << 20)) }
        let staleErrno = errno
        #expect(stale < 0 && staleErrno == EIO, "a handle on the copy that failed its check read \(stale) bytes")
        let again = await Self.read(setup.mountedShard)
        #expect(again.errno == 0)
        #expect(again.bytes == (try setup.expected(0..<(StreamingMountTests.shardMiB << 20))))
        _ = await setup.stop(daemon)
    }

    /// The server refuses every GET of one range: a read of that range gets EIO once the retry budget is spent,
    /// while the ranges around it read right; once the server serves it again the download completes.
    @Test func aRangeTheServerWillNotServeFailsAfterTheRetryBudgetWhileTheRestReads() async throws {
        let setup = try await Setup(delayMilliseconds: 300)
        defer { setup.remove() }
        let refusedAt = 30 << 20  // in part 3 of the ciphertext
        try setup.faults(["refuse_ranges": [["key": setup.shardKey, "offset": refusedAt]]])
        let daemon = try await setup.start()
        defer { if daemon.exited() == nil { daemon.signal(SIGKILL); _ = daemon.wait() } }

        let started = ContinuousClock.now
        let refused = await Self.read(setup.mountedShard, offset: 30 << 20, count: 1 << 20)
        #expect(refused.errno == EIO && refused.bytes.isEmpty, "read \(refused.bytes.count) bytes, errno \(refused.errno)")
        #expect(ContinuousClock.now - started < .seconds(55), "EIO came from the read timeout, not the retry budget")
        let before = await Self.read(setup.mountedShard, offset: 0, count: 8 << 20)
        let expectedBefore = try setup.expected(0..<(8 << 20))
        #expect(before.errno == 0 && before.bytes == expectedBefore)
        let after = await Self.read(setup.mountedShard, offset: 40 << 20, count: 8 << 20)
        let expectedAfter = try setup.expected((40 << 20)..<(48 << 20))
        #expect(after.errno == 0 && after.bytes == expectedAfter)

        try setup.faults([:])
        let done = try await setup.wait { setup.cachefs($0)?.streaming?.complete == true }
        #expect(done != nil, "the download did not complete once the range was served: \(daemon.stderr)")
        let middle = await Self.read(setup.mountedShard, offset: 30 << 20, count: 1 << 20)
        let expectedMiddle = try setup.expected((30 << 20)..<(31 << 20))
        #expect(middle.errno == 0 && middle.bytes == expectedMiddle)
        _ = await setup.stop(daemon)
    }
}

/// Whether a path is a mount point now.
enum FuseMountPoint {
    static func isMounted(_ path: String) -> Bool {
        let table = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        return table.split(separator: "\n").contains { $0.split(separator: " ").dropFirst(4).first.map(String.init) == path }
    }
}
