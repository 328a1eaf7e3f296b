import AsyncHTTPClient
import CaidBase
import Foundation
import Logging
@testable import ObjectStore
@testable import OSSProtocol
import Testing

/// The streaming mount's ledger, without I/O: which part is fetched next, who waits for what, and what a failure
/// or a failed copy does to readers.
@Suite struct StreamingLedgerTests {
    static let mib: UInt64 = 1 << 20
    static let object = ObjectSummary(key: "m/shard", size: 40 << 20, etag: "\"e1\"")

    /// A ledger streaming the 40 MiB object in 8 MiB parts (5 parts), none on disk.
    static func ledger(present: [Int: UInt64] = [:]) -> (StreamingLedger, UInt64) {
        var ledger = StreamingLedger()
        let generation = ledger.stream(path: "shard", object: object, partSize: 8 << 20, stagingPath: "/s/shard", file: 7, present: present)
        return (ledger, generation)
    }

    @Test func aReadOfMissingBytesWaitsAndPutsItsPartsOnTheUrgentQueueOnce() {
        var (ledger, generation) = Self.ledger()
        var since: UInt64?
        // Bytes 17–25 MiB: parts 2 and 3.
        #expect(ledger.need("shard", range: (17 * Self.mib)..<(25 * Self.mib), generation: generation, since: &since) == .wait(requested: true))
        #expect(ledger.need("shard", range: (17 * Self.mib)..<(25 * Self.mib), generation: generation, since: &since) == .wait(requested: false))
        // Then the readahead after them, here the one part left.
        #expect(ledger.claimUrgent()?.part.index == 2)
        #expect(ledger.claimUrgent()?.part.index == 3)
        #expect(ledger.claimUrgent()?.part.index == 4)
        #expect(ledger.claimUrgent() == nil)
    }

    /// A reader right behind the download waits for the part in flight and asks for nothing more: readahead there
    /// would only share the bandwidth with the part it waits for (and so delay the first byte a model loader reads).
    @Test func aReadOfAPartInFlightAddsNoReadahead() {
        var (ledger, generation) = Self.ledger()
        #expect(ledger.claimNext("shard", generation: generation)?.part.index == 0)
        var since: UInt64?
        #expect(ledger.need("shard", range: 0..<(1 * Self.mib), generation: generation, since: &since) == .wait(requested: false))
        #expect(ledger.claimUrgent() == nil)
        #expect(ledger.lastJumpedTo == nil)
        // Once it jumps ahead of the download, its part and the readahead after it go first, and the download, were
        // it elsewhere, would start this object next.
        #expect(ledger.need("shard", range: (24 * Self.mib)..<(25 * Self.mib), generation: generation, since: &since) == .wait(requested: true))
        #expect(ledger.lastJumpedTo == "shard")
        #expect(ledger.claimUrgent()?.part.index == 3)
        #expect(ledger.claimUrgent()?.part.index == 4)
    }

    @Test func theDownloadTakesAPartAReaderWaitsForBeforeTheNextInOrder() {
        var (ledger, generation) = Self.ledger()
        #expect(ledger.claimNext("shard", generation: generation)?.part.index == 0)
        var since: UInt64?
        _ = ledger.need("shard", range: (33 * Self.mib)..<(34 * Self.mib), generation: generation, since: &since)
        #expect(ledger.claimNext("shard", generation: generation)?.part.index == 4)
        #expect(ledger.claimNext("shard", generation: generation)?.part.index == 1)
        // Part 4 is being fetched: the lane does not take it again.
        #expect(ledger.claimUrgent() == nil)
        #expect(ledger.fetching("shard", generation: generation) == 3)
    }

    @Test func aReadIsReadyOnceItsPartsArrivedAndFilesNotStreamedNeverWait() {
        var (ledger, generation) = Self.ledger(present: [0: 11])
        var since: UInt64?
        #expect(ledger.need("shard", range: 0..<(8 * Self.mib), generation: generation, since: &since) == .ready)
        #expect(ledger.need("shard", range: (8 * Self.mib)..<(9 * Self.mib), generation: generation, since: &since) == .wait(requested: true))
        let request = ledger.claimUrgent()
        ledger.partArrived("shard", generation: generation, index: request?.part.index ?? -1, crc: 22)
        #expect(ledger.need("shard", range: (8 * Self.mib)..<(9 * Self.mib), generation: generation, since: &since) == .ready)
        #expect(ledger.present("shard", generation: generation) == [0: 11, 1: 22])
        #expect(ledger.need("config.json", range: 0..<10, generation: 1, since: &since) == .ready)
    }

    @Test func aFailedPartFailsTheReadersWaitingForItButANewReaderAsksAgain() {
        var (ledger, generation) = Self.ledger()
        var waiting: UInt64?
        _ = ledger.need("shard", range: 0..<10, generation: generation, since: &waiting)
        let request = ledger.claimUrgent()
        ledger.partFailed("shard", generation: generation, index: request?.part.index ?? -1, reason: "503 ServiceUnavailable")
        guard case .unavailable(let reason) = ledger.need("shard", range: 0..<10, generation: generation, since: &waiting) else {
            Issue.record("the waiting reader was not told")
            return
        }
        #expect(reason.contains("503"))
        var later: UInt64?
        #expect(ledger.need("shard", range: 0..<10, generation: generation, since: &later) == .wait(requested: true))
    }

    @Test func aCopyThatFailsItsCheckRefusesItsReadersAndANewCopyIsANewGeneration() {
        var (ledger, generation) = Self.ledger()
        ledger.corrupt("shard", generation: generation, reason: "CRC-64 does not match")
        var since: UInt64?
        #expect(ledger.need("shard", range: 0..<10, generation: generation, since: &since) == .unavailable("CRC-64 does not match"))
        #expect(ledger.progress.refetching == ["m/shard"])
        let next = ledger.stream(path: "shard", object: Self.object, partSize: 8 << 20, stagingPath: "/s/shard", file: 8, present: [:])
        #expect(next != generation)
        #expect(ledger.generation(of: "shard") == next)
        guard case .unavailable = ledger.need("shard", range: 0..<10, generation: generation, since: &since) else {
            Issue.record("a handle on the failed copy was served")
            return
        }
        #expect(ledger.need("shard", range: 0..<10, generation: next, since: &since) == .wait(requested: true))
    }

    @Test func theSameStagingFileAfterARestartKeepsItsGenerationAndParts() {
        var (ledger, generation) = Self.ledger()
        ledger.partArrived("shard", generation: generation, index: 3, crc: 33)
        let again = ledger.stream(path: "shard", object: Self.object, partSize: 8 << 20, stagingPath: "/s/shard", file: 7, present: [0: 11])
        #expect(again == generation)
        #expect(ledger.present("shard", generation: generation) == [0: 11, 3: 33])
    }

    @Test func progressCountsThePartsOnDiskAndTheWaitingReads() {
        var (ledger, generation) = Self.ledger(present: [0: 1, 4: 2])
        ledger.waitingReads = 2
        let progress = ledger.progress
        #expect(progress.localBytes == 16 * Self.mib && progress.totalBytes == 40 * Self.mib && progress.waitingReads == 2 && progress.streaming == 1)
        ledger.verified("shard", generation: generation)
        #expect(ledger.progress.localBytes == 40 * Self.mib && ledger.progress.streaming == 0)
        var since: UInt64?
        #expect(ledger.need("shard", range: 0..<10, generation: generation, since: &since) == .ready)
    }

    /// The urgent lane with no reader waiting sleeps: it once gave back the slot it found no part for with a ring of
    /// its own bell, and so spun a whole core (and, on one CPU, starved caid).
    @Test func theUrgentLaneSleepsWhileNoReaderWaits() async throws {
        let download = StreamingDownload()
        var options = Fetcher.Options()
        options.streaming = download
        let endpoint = try Endpoint.resolve(endpoint: URL(string: "http://127.0.0.1:9")!, bucket: "models", region: "cn-test").get()
        let client = OSSClient(
            endpoint: endpoint, bucket: "models", credentials: OSSCredentials(accessKeyID: "LTAIlane", secret: Secret(Array("s".utf8))),
            http: HTTPClient.shared)
        let fetcher = Fetcher(client: client, prefix: "m", cacheDirectory: "/nonexistent", options: options, logger: Logger(label: "lane"))
        let lane = Task { await fetcher.serveWaitingReads() }
        defer { lane.cancel() }
        // Parked on its doorbell is the event that it sleeps; a lane that rings its own bell never parks.
        for _ in 0..<1_000_000 where !download.laneIsParked { await Task.yield() }
        try #require(download.laneIsParked, "the idle lane never parked (it woke \(download.laneWakeups) times)")
        // And stays parked while the rest of the pool runs: a spinning lane would wake again and again here.
        let parkedAfter = download.laneWakeups
        for _ in 0..<10_000 { await Task.yield() }
        #expect(download.laneIsParked && download.laneWakeups == parkedAfter, "the idle lane woke \(download.laneWakeups - parkedAfter) more times")
        lane.cancel()
        await lane.value
    }
}
