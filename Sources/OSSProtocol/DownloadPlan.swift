import Foundation

/// How one object is fetched: byte ranges of at most `partSize`, each checked by its own CRC-64 and the whole by
/// combining them, so parts can arrive in any order and a restart can keep the parts already verified.
public struct DownloadPlan: Sendable, Equatable, Codable {
    /// One byte range.
    public struct Part: Sendable, Equatable, Codable {
        public var index: Int
        public var offset: UInt64
        public var length: UInt64

        /// The HTTP `Range` header value for this part.
        public var rangeHeader: String { "bytes=\(offset)-\(offset + length - 1)" }
    }

    public var object: ObjectSummary
    public var partSize: UInt64
    public var parts: [Part]

    /// Splits `object` into parts of `partSize` bytes (the last one shorter); an empty object has no parts.
    public init(object: ObjectSummary, partSize: UInt64) {
        self.object = object
        self.partSize = max(1, partSize)
        var parts: [Part] = []
        var offset: UInt64 = 0
        while offset < object.size {
            let length = min(self.partSize, object.size - offset)
            parts.append(Part(index: parts.count, offset: offset, length: length))
            offset += length
        }
        self.parts = parts
    }

    /// The CRC-64 of the whole object from the CRCs of its parts, in order.
    /// - Returns: `nil` while a part's CRC is missing.
    public func combinedCRC(_ crcs: [Int: UInt64]) -> UInt64? {
        var total = CRC64().value
        for part in parts {
            guard let crc = crcs[part.index] else { return nil }
            total = CRC64.combine(total, crc, length: part.length)
        }
        return total
    }
}

/// What is known to be complete and verified in the cache: per object key, its size, ETag and CRC-64. A restart
/// skips objects whose entry still matches the listing.
public struct Manifest: Sendable, Equatable, Codable {
    public struct Entry: Sendable, Equatable, Codable {
        public var size: UInt64
        public var etag: String
        public var crc64: UInt64
        /// The cached file as it was when verified; nil in manifests from before caid recorded it (such a file is
        /// read again once to check its CRC-64).
        public var file: FileStamp?
        /// The SHA-256 (hex) the file had when checked against the model manifest; nil until it was.
        public var sha256: String?

        public init(size: UInt64, etag: String, crc64: UInt64) {
            self.size = size
            self.etag = etag
            self.crc64 = crc64
        }
    }

    public var version = 1
    public var entries: [String: Entry] = [:]

    public init() {}

    /// Whether `object` is complete in the cache as listed now.
    public func isComplete(_ object: ObjectSummary) -> Bool {
        guard let entry = entries[object.key] else { return false }
        return entry.size == object.size && entry.etag == object.etag
    }

    /// Keys in the manifest that the listing no longer has: their cached files are stale.
    public func stale(comparedWith listing: [ObjectSummary]) -> [String] {
        let listed = Set(listing.map(\.key))
        return entries.keys.filter { !listed.contains($0) }.sorted()
    }

    /// Reads a manifest; a damaged one is treated as empty (everything is fetched and verified again).
    public static func decode(_ data: Data) -> Manifest {
        (try? JSONDecoder().decode(Manifest.self, from: data)) ?? Manifest()
    }

    public func encoded() -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return (try? encoder.encode(self)) ?? Data()
    }
}

/// The parts of one object already written to its staging file, with their CRC-64s, so that a download killed
/// half way resumes without fetching them again. Valid only for the same object version and part size.
public struct Checkpoint: Sendable, Equatable, Codable {
    public var etag: String
    public var size: UInt64
    public var partSize: UInt64
    public var crcs: [Int: UInt64] = [:]
    /// The object CRC-64 OSS reported.
    public var serverCRC: UInt64?

    public init(object: ObjectSummary, partSize: UInt64) {
        etag = object.etag
        size = object.size
        self.partSize = partSize
    }

    public func matches(object: ObjectSummary, partSize: UInt64) -> Bool {
        etag == object.etag && size == object.size && self.partSize == partSize
    }
}
