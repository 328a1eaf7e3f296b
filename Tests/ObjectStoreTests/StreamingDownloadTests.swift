import Foundation
@testable import ObjectStore
import OSSProtocol
import Testing

/// The fetch's wait for the parts still in flight for a copy (the urgent lane's): it resumes when the last of them
/// arrives or fails, or on cancellation; never by polling.
@Suite struct StreamingDownloadTests {
    static let object = ObjectSummary(key: "m/shard", size: 40 << 20, etag: "\"e1\"")

    /// Waits, by yielding, until `download` has a fetch task parked in `settled`: the registration is the event.
    static func untilParked(_ download: StreamingDownload) async throws {
        for _ in 0..<100_000 where download.settleWaiting == 0 { await Task.yield() }
        try #require(download.settleWaiting == 1)
    }

    @Test func aCopyWithNothingInTheLaneIsSettledAtOnce() async {
        let download = StreamingDownload()
        let generation = download.stream(path: "shard", object: Self.object, partSize: 8 << 20, stagingPath: "/s/shard", file: 7, present: [:])
        await download.settled("shard", generation: generation)
        #expect(download.settleWaiting == 0)
    }

    @Test(arguments: [true, false]) func theLanesLastPartArrivingOrFailingResumesTheFetch(arrives: Bool) async throws {
        let download = StreamingDownload()
        let generation = download.stream(path: "shard", object: Self.object, partSize: 8 << 20, stagingPath: "/s/shard", file: 7, present: [:])
        let request = try #require(download.claimNext("shard", generation: generation))
        let fetch = Task { await download.settled("shard", generation: generation) }
        try await Self.untilParked(download)
        if arrives {
            download.partArrived("shard", generation: generation, index: request.part.index, crc: 1)
        } else {
            download.partFailed("shard", generation: generation, index: request.part.index, reason: "test")
        }
        await fetch.value
        #expect(download.settleWaiting == 0)
    }

    @Test func aChangeToAnotherCopyDoesNotResumeTheFetchButCancellationDoes() async throws {
        let download = StreamingDownload()
        let generation = download.stream(path: "shard", object: Self.object, partSize: 8 << 20, stagingPath: "/s/shard", file: 7, present: [:])
        let other = ObjectSummary(key: "m/other", size: 16 << 20, etag: "\"e2\"")
        let otherGeneration = download.stream(path: "other", object: other, partSize: 8 << 20, stagingPath: "/s/other", file: 8, present: [:])
        _ = try #require(download.claimNext("shard", generation: generation))
        let otherPart = try #require(download.claimNext("other", generation: otherGeneration))
        let fetch = Task { await download.settled("shard", generation: generation) }
        try await Self.untilParked(download)
        download.partArrived("other", generation: otherGeneration, index: otherPart.part.index, crc: 1)
        #expect(download.settleWaiting == 1)
        fetch.cancel()
        await fetch.value
        #expect(download.settleWaiting == 0)
    }
}
