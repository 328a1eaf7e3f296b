import Crypto
import Foundation

/// The model's identity before its key: every ciphertext object of the volume (`gocryptfs.conf` and the `diriv`
/// files included) with its size and SHA-256, in one canonical JSON form whose SHA-256 is the model digest the owner
/// registers with Trustee. A CRC-64 proves a download intact; only this proves it is the model that was measured.
///
/// The canonical form is caid's own: `{"objects":[{"name":…,"sha256":…,"size":…},…],"version":1}`, keys in that
/// (sorted) order, objects sorted by name (bytewise), no whitespace, names printable ASCII without `"` or `\` (so
/// no escaping is ever needed). A manifest that is not byte for byte in this form is refused, so one model has one
/// digest.
public struct ModelManifest: Sendable, Equatable {
    /// One ciphertext object, by its path in the volume ("gocryptfs.conf", "<dir>/gocryptfs.diriv").
    public struct Object: Sendable, Equatable {
        public var name: String
        public var size: UInt64
        /// 32 bytes.
        public var sha256: [UInt8]

        public init(name: String, size: UInt64, sha256: [UInt8]) {
            self.name = name
            self.size = size
            self.sha256 = sha256
        }
    }

    /// The manifest's name: beside the ciphertext directory (`qwen-cipher.caid-manifest.json`) and beside the
    /// bucket prefix (`qwen.caid-manifest.json`, ``Fetcher/manifestKey(prefix:)``), not inside the volume, where
    /// `gocryptfs -fsck` would report it as a damaged name.
    public static let fileName = "caid-manifest.json"

    /// Where the manifest of a volume lives: beside it. `volume` is a bucket prefix (`qwen/`, or `""` for a volume at
    /// the bucket's root) or a ciphertext directory (`/data/qwen-cipher`); this gives `qwen.caid-manifest.json`,
    /// `caid-manifest.json` and `/data/qwen-cipher.caid-manifest.json`.
    public static func location(beside volume: String) -> String {
        var root = volume
        while root.count > 1, root.hasSuffix("/") { root.removeLast() }
        return root.isEmpty ? fileName : root + "." + fileName
    }
    /// More than any model has; a listing is bounded by the same million.
    public static let maximumObjects = 1_000_000
    /// The largest manifest caid downloads and parses.
    public static let maximumSize = 256 << 20

    public private(set) var objects: [Object]

    /// - Throws: when a name cannot be written canonically or appears twice.
    public init(objects: [Object]) throws(ModelManifestError) {
        let sorted = objects.sorted { Array($0.name.utf8).lexicographicallyPrecedes(Array($1.name.utf8)) }
        for (index, object) in sorted.enumerated() {
            guard Self.isCanonicalName(object.name) else {
                throw ModelManifestError("the name '\(object.name.prefix(200))' cannot go into a model manifest: names are printable ASCII without quotes or backslashes, 1 to 4096 bytes")
            }
            guard object.sha256.count == 32 else { throw ModelManifestError("'\(object.name)' has a SHA-256 of \(object.sha256.count) bytes") }
            if index > 0, sorted[index - 1].name == object.name { throw ModelManifestError("'\(object.name)' is listed twice") }
        }
        guard sorted.count <= Self.maximumObjects else { throw ModelManifestError("\(sorted.count) objects; at most \(Self.maximumObjects)") }
        self.objects = sorted
    }

    /// The canonical bytes, the ones the digest covers and the file holds.
    public var canonicalBytes: [UInt8] {
        var text = #"{"objects":["#
        for (index, object) in objects.enumerated() {
            if index > 0 { text += "," }
            text += #"{"name":""# + object.name + #"","sha256":""# + SignerV4.hex(object.sha256) + #"","size":"# + String(object.size) + "}"
        }
        text += #"],"version":1}"#
        return Array(text.utf8)
    }

    /// `sha256:<64 hex>`: the model's identity, as `caid encrypt` prints it and the measured event carries it.
    public var digest: String { "sha256:" + SignerV4.hex(Array(SHA256.hash(data: canonicalBytes))) }

    /// Parses a manifest from the bucket. Untrusted bytes: every failure is a ``ModelManifestError``.
    public static func parse(_ bytes: [UInt8]) throws(ModelManifestError) -> ModelManifest {
        guard bytes.count <= maximumSize else { throw ModelManifestError("it is \(bytes.count) bytes; at most \(maximumSize)") }
        let root: Any
        do {
            root = try JSONSerialization.jsonObject(with: Data(bytes))
        } catch {
            throw ModelManifestError("it is not JSON")
        }
        guard let top = root as? [String: Any], top.count == 2, top["version"] as? Int == 1, let list = top["objects"] as? [Any] else {
            throw ModelManifestError(#"it is not {"objects":[…],"version":1}"#)
        }
        guard list.count <= maximumObjects else { throw ModelManifestError("it lists \(list.count) objects; at most \(maximumObjects)") }
        var objects: [Object] = []
        objects.reserveCapacity(list.count)
        for (index, item) in list.enumerated() {
            guard let entry = item as? [String: Any], entry.count == 3, let name = entry["name"] as? String,
                let hexDigest = entry["sha256"] as? String, let digest = unhex(hexDigest), digest.count == 32,
                let number = entry["size"] as? NSNumber, let size = UInt64(exactly: number.doubleValue), size <= 1 << 53
            else {
                throw ModelManifestError("object \(index) is not {\"name\",\"sha256\" (64 hex digits),\"size\"}")
            }
            objects.append(Object(name: name, size: size, sha256: digest))
        }
        let manifest = try ModelManifest(objects: objects)
        guard manifest.canonicalBytes == bytes else {
            throw ModelManifestError("it is not in canonical form (sorted, compact, as caid encrypt and caid manifest write it), so its digest would be ambiguous; write it again with caid manifest")
        }
        return manifest
    }

    /// What a listing of the volume's objects (paths relative to the volume, with sizes) lacks or has beyond the
    /// manifest. The manifest's own file (in a volume at a bucket's root) is not an object of the model.
    public func compare(listing: [(name: String, size: UInt64)]) -> (missing: [String], unlisted: [String], resized: [String]) {
        let listed = Dictionary(listing.filter { $0.name != Self.fileName }.map { ($0.name, $0.size) }, uniquingKeysWith: { first, _ in first })
        var missing: [String] = []
        var resized: [String] = []
        var known = Set<String>()
        for object in objects {
            known.insert(object.name)
            guard let size = listed[object.name] else { missing.append(object.name); continue }
            if size != object.size { resized.append("'\(object.name)' is \(size) bytes; the manifest says \(object.size)") }
        }
        let unlisted = listed.keys.filter { !known.contains($0) }.sorted()
        return (missing, unlisted, resized)
    }

    /// The manifest's object called `name`.
    public func object(named name: String) -> Object? {
        // Sorted by UTF-8 bytes: a binary search.
        let key = Array(name.utf8)
        var low = 0
        var high = objects.count
        while low < high {
            let middle = (low + high) / 2
            let probe = Array(objects[middle].name.utf8)
            if probe == key { return objects[middle] }
            if probe.lexicographicallyPrecedes(key) { low = middle + 1 } else { high = middle }
        }
        return nil
    }

    static func isCanonicalName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        return !bytes.isEmpty && bytes.count <= 4096 && bytes.allSatisfy { $0 >= 0x20 && $0 < 0x7F && $0 != 0x22 && $0 != 0x5C }
    }

    static func unhex(_ text: String) -> [UInt8]? {
        let bytes = Array(text.utf8)
        guard bytes.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: c - 0x30
            case 0x61...0x66: c - 0x61 + 10
            default: nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count / 2)
        var index = 0
        while index < bytes.count {
            guard let high = nibble(bytes[index]), let low = nibble(bytes[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        return out
    }
}

/// A model manifest that cannot be used, and why.
public struct ModelManifestError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "the model manifest \(ModelManifest.fileName): \(message)" }
}
