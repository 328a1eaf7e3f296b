/// What a download has gathered of one object, part by part: each part's CRC-64 and who gave it, OSS's CRC-64 of
/// the whole, and, when the whole does not verify, which parts to take again from OSS and which sharing peer to
/// blame. Pure: the fetcher does the I/O it asks for, and the blame policy is tested without a network.
///
/// The policy: bytes from peers are trusted only as far as the object's CRC-64, which OSS alone gives, verifies. When
/// it does not, every part a peer gave is fetched again from OSS; a peer whose part differs from OSS's is blamed
/// (the fetcher stops asking it for this object), and if the whole still does not verify, OSS's own bytes are wrong
/// and the copy is refused.
public struct PartTally: Sendable, Equatable {
    /// One part as it arrived.
    public struct Arrival: Sendable, Equatable {
        public var index: Int
        public var crc: UInt64
        /// The sharing peer that gave it; nil for OSS.
        public var peer: String?
        /// The object's CRC-64 OSS sent with it (`x-oss-hash-crc64ecma`); nil from a peer.
        public var serverCRC: UInt64?

        public init(index: Int, crc: UInt64, peer: String? = nil, serverCRC: UInt64? = nil) {
            self.index = index
            self.crc = crc
            self.peer = peer
            self.serverCRC = serverCRC
        }
    }

    /// What the tally says of the object now.
    public enum Verdict: Sendable, Equatable {
        /// Parts are missing.
        case incomplete
        /// No OSS response has given the object's CRC-64 yet: ask OSS for it.
        case needsServerCRC
        /// The parts a peer gave must be fetched again from OSS (`rechecked(_:ossCRC:)` each).
        case recheck([DownloadPlan.Part])
        /// Every part is there and their combined CRC-64 is OSS's.
        case verified(UInt64)
        /// Every part is OSS's own and still the whole does not match: the copy must not be used.
        case mismatch(combined: UInt64, expected: UInt64)
    }

    /// Two OSS responses gave different CRC-64s for one object: it changed during the download.
    public struct ChangedDuringDownload: Error, Sendable, Equatable {
        public var first: UInt64
        public var second: UInt64
    }

    public let plan: DownloadPlan
    /// The parts verified so far and OSS's CRC-64: what the checkpoint file keeps across restarts.
    public private(set) var checkpoint: Checkpoint
    /// The parts a peer gave, and who; emptied as they are checked against OSS.
    public private(set) var fromPeers: [Int: String] = [:]

    public init(plan: DownloadPlan, checkpoint: Checkpoint) {
        self.plan = plan
        self.checkpoint = checkpoint
    }

    /// The parts not yet there, in order.
    public var missing: [DownloadPlan.Part] { plan.parts.filter { checkpoint.crcs[$0.index] == nil } }

    /// The bytes of the parts already there.
    public var presentBytes: UInt64 { plan.parts.filter { checkpoint.crcs[$0.index] != nil }.reduce(0) { $0 + $1.length } }

    /// Records a part.
    /// - Throws: ``ChangedDuringDownload`` when OSS reports a CRC-64 for the object other than one it reported before.
    public mutating func record(_ arrival: Arrival) throws(ChangedDuringDownload) {
        if let reported = arrival.serverCRC {
            if let known = checkpoint.serverCRC, known != reported { throw ChangedDuringDownload(first: known, second: reported) }
            checkpoint.serverCRC = reported
        }
        checkpoint.crcs[arrival.index] = arrival.crc
        if let peer = arrival.peer { fromPeers[arrival.index] = peer } else { fromPeers[arrival.index] = nil }
    }

    /// Parts verified elsewhere (a streaming mount's urgent lane, from OSS) that this download need not fetch.
    public mutating func merge(fromOSS crcs: [Int: UInt64]) {
        for (index, crc) in crcs {
            checkpoint.crcs[index] = crc
            fromPeers[index] = nil
        }
    }

    /// OSS's CRC-64 of the whole object, from a response that carried no part of it (all parts came from peers).
    public mutating func serverCRC(_ crc: UInt64) {
        checkpoint.serverCRC = crc
    }

    public var verdict: Verdict {
        guard let expected = checkpoint.serverCRC else {
            return missing.isEmpty ? .needsServerCRC : .incomplete
        }
        if plan.parts.isEmpty { return expected == CRC64().value ? .verified(expected) : .mismatch(combined: CRC64().value, expected: expected) }
        guard let combined = plan.combinedCRC(checkpoint.crcs) else { return .incomplete }
        if combined == expected { return .verified(combined) }
        let suspects = plan.parts.filter { fromPeers[$0.index] != nil }
        return suspects.isEmpty ? .mismatch(combined: combined, expected: expected) : .recheck(suspects)
    }

    /// Records OSS's CRC-64 of a part a peer gave.
    /// - Returns: the peer to blame when its bytes differ from OSS's; nil when they match (or OSS gave the part).
    public mutating func rechecked(_ index: Int, ossCRC: UInt64) -> String? {
        let peer = fromPeers.removeValue(forKey: index)
        let differs = checkpoint.crcs[index] != ossCRC
        checkpoint.crcs[index] = ossCRC
        return differs ? peer : nil
    }
}
