import ObjectStore
import OSSProtocol
import Testing

/// The download's tally and its blame policy for sharing peers, without a network: milliseconds.
@Suite struct PartTallyTests {
    /// A 10-byte object in parts of 4 bytes: 0-3, 4-7, 8-9.
    let bytes: [UInt8] = Array("0123456789".utf8)
    var plan: DownloadPlan { DownloadPlan(object: ObjectSummary(key: "m/a", size: 10, etag: "e"), partSize: 4) }
    var checkpoint: Checkpoint { Checkpoint(object: plan.object, partSize: 4) }

    func crc(_ slice: some Sequence<UInt8>) -> UInt64 {
        var crc = CRC64()
        crc.update(slice)
        return crc.value
    }

    func crc(part index: Int, of data: [UInt8]) -> UInt64 {
        let part = plan.parts[index]
        return crc(data[Int(part.offset)..<Int(part.offset + part.length)])
    }

    var whole: UInt64 { crc(bytes) }

    @Test func partsFromOSSThatCombineToItsCRCVerify() throws {
        var tally = PartTally(plan: plan, checkpoint: checkpoint)
        #expect(tally.verdict == .incomplete)
        for index in [2, 0, 1] {
            try tally.record(.init(index: index, crc: crc(part: index, of: bytes), serverCRC: whole))
            if index != 1 { #expect(tally.verdict == .incomplete) }
        }
        #expect(tally.missing.isEmpty)
        #expect(tally.verdict == .verified(whole))
    }

    @Test func twoCRCsForOneObjectMeanItChanged() throws {
        var tally = PartTally(plan: plan, checkpoint: checkpoint)
        try tally.record(.init(index: 0, crc: 1, serverCRC: 7))
        let error = #expect(throws: PartTally.ChangedDuringDownload.self) { try tally.record(.init(index: 1, crc: 2, serverCRC: 8)) }
        #expect(error?.first == 7 && error?.second == 8)
    }

    @Test func aPeerWhosePartDiffersFromOSSIsBlamedAndTheObjectThenVerifies() throws {
        var forged = bytes
        forged[5] = UInt8(ascii: "X")
        var tally = PartTally(plan: plan, checkpoint: checkpoint)
        try tally.record(.init(index: 0, crc: crc(part: 0, of: bytes), peer: "10.0.0.2"))
        try tally.record(.init(index: 1, crc: crc(part: 1, of: forged), peer: "10.0.0.3"))
        try tally.record(.init(index: 2, crc: crc(part: 2, of: bytes), serverCRC: whole))
        guard case .recheck(let parts) = tally.verdict else {
            Issue.record("expected the peers' parts to be checked against OSS, got \(tally.verdict)")
            return
        }
        #expect(parts.map(\.index) == [0, 1], "every part a peer gave, not only the bad one: nothing says which it is")
        #expect(tally.rechecked(0, ossCRC: crc(part: 0, of: bytes)) == nil, "the honest peer is not blamed")
        #expect(tally.rechecked(1, ossCRC: crc(part: 1, of: bytes)) == "10.0.0.3")
        #expect(tally.verdict == .verified(whole))
    }

    @Test func whenOSSItselfDoesNotAddUpTheCopyIsRefusedAndNoPeerIsBlamed() throws {
        var tally = PartTally(plan: plan, checkpoint: checkpoint)
        try tally.record(.init(index: 0, crc: crc(part: 0, of: bytes), peer: "10.0.0.2"))
        try tally.record(.init(index: 1, crc: crc(part: 1, of: bytes), serverCRC: whole ^ 1))
        try tally.record(.init(index: 2, crc: crc(part: 2, of: bytes)))
        #expect(tally.verdict == .recheck([plan.parts[0]]))
        #expect(tally.rechecked(0, ossCRC: crc(part: 0, of: bytes)) == nil)
        #expect(tally.verdict == .mismatch(combined: whole, expected: whole ^ 1))
    }

    @Test func partsAllFromPeersStillNeedOSSsCRC() throws {
        var tally = PartTally(plan: plan, checkpoint: checkpoint)
        for index in 0..<3 { try tally.record(.init(index: index, crc: crc(part: index, of: bytes), peer: "10.0.0.2")) }
        #expect(tally.verdict == .needsServerCRC)
        tally.serverCRC(whole)
        #expect(tally.verdict == .verified(whole))
    }

    @Test func partsVerifiedElsewhereFromOSSAreNoLongerThePeersAndKeptPartsCount() throws {
        var kept = checkpoint
        kept.crcs[0] = crc(part: 0, of: bytes)
        var tally = PartTally(plan: plan, checkpoint: kept)
        #expect(tally.presentBytes == 4)
        #expect(tally.missing.map(\.index) == [1, 2])
        try tally.record(.init(index: 1, crc: 99, peer: "10.0.0.2"))
        tally.merge(fromOSS: [1: crc(part: 1, of: bytes), 2: crc(part: 2, of: bytes)])
        #expect(tally.fromPeers.isEmpty)
        tally.serverCRC(whole)
        #expect(tally.verdict == .verified(whole))
    }

    @Test func anEmptyObjectNeedsOnlyOSSsCRC() {
        var tally = PartTally(plan: DownloadPlan(object: ObjectSummary(key: "m/empty", size: 0, etag: "e"), partSize: 4),
                              checkpoint: Checkpoint(object: ObjectSummary(key: "m/empty", size: 0, etag: "e"), partSize: 4))
        #expect(tally.verdict == .needsServerCRC)
        tally.serverCRC(CRC64().value)
        #expect(tally.verdict == .verified(CRC64().value))
    }
}
