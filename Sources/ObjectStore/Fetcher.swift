import AsyncHTTPClient
import CaidBase
import CGNU
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import OSSProtocol
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Downloads every object under a prefix into the cache directory, in parallel ranges, each range checked by
/// CRC-64 and every object by OSS's own size and CRC-64 before it is moved into place. A manifest of verified
/// objects lets a restart skip them; objects no longer listed are removed from the cache.
public struct Fetcher: Sendable {
    public struct Options: Sendable {
        public var partSize: UInt64 = 8 << 20
        public var concurrency = 8
        public var attempts = 6
        /// Where to try ranges before OSS (sharing peers); nil for OSS only.
        public var alternate: (any AlternateSource)?
        /// Whether a prefix without its model manifest (``Fetcher/manifestKey(prefix:)``) is refused (`CAID_MODEL_MANIFEST=required`) rather than
        /// fetched unmeasured.
        public var requireManifest = false
        /// Where a streaming mount learns what has arrived (`CAID_MOUNT_STREAMING=on`); nil: every object is
        /// complete and verified before the run returns, and nothing is read before.
        public var streaming: StreamingDownload?

        public init() {}
    }

    /// Parts a streaming mount's readers wait for (and the readahead after them) are fetched this many at a time,
    /// beside the download's own requests.
    static let urgentConcurrency = 8
    /// Objects downloaded at once behind a streaming mount: few, so that the parts in flight when a reader asks are
    /// few too, and its part does not share the bandwidth with dozens. The next one starts only once every part of
    /// the one before is under way (``fetchObjects(_:inOrder:manifest:model:report:)``), so the bandwidth goes to
    /// the objects in the order a model loader reads them (the one a reader jumped to first), and the second slot
    /// only fills the first's tail.
    static let streamedObjectConcurrency = 2

    /// Whether an object is fetched whole before a streaming mount starts: the volume's config, directory IVs and
    /// long names (the mount reads them whole as it starts), and anything up to 16 MiB: configs and tokenizers
    /// (a `tokenizer.json` is 2–10 MB), which a model loader reads before the weights, so that its first wait is for
    /// a shard. Together they are a few tens of MB at most.
    static func fetchedWhole(_ object: ObjectSummary) -> Bool {
        let name = object.key.split(separator: "/").last.map(String.init) ?? object.key
        return object.size <= 16 << 20 || name == "gocryptfs.conf" || name == "gocryptfs.diriv" || name.hasSuffix(".name")
    }

    /// What a run did.
    public struct Summary: Sendable {
        public var objects = 0
        public var downloaded = 0
        public var skipped = 0
        public var removed = 0
        public var bytes: UInt64 = 0
        /// Listed objects caid will not store, each with why: they are left out of the cache and the mount.
        public var refused: [String] = []
        /// The model manifest's digest (`sha256:…`) when the prefix has one; every object was checked against it.
        public var modelDigest: String?
    }

    /// The largest object caid stores: far beyond any model file, and small enough that offsets and sums of many
    /// such objects stay within `off_t` and `UInt64`.
    public static let maximumObjectSize: UInt64 = 1 << 48

    /// The objects' sizes added up, checked: each is at most 2^48, but a million of them need not fit.
    static func totalSize(of objects: [ObjectSummary], prefix: String) throws(FetchError) -> UInt64 {
        var total: UInt64 = 0
        for object in objects {
            let (sum, overflow) = total.addingReportingOverflow(object.size)
            guard !overflow else { throw FetchError.listing("the objects under \(prefix) add up to more than 2^64 bytes") }
            total = sum
        }
        return total
    }

    /// Splits a listing into the objects caid stores and those it refuses (a key that does not map to a safe
    /// path in the cache, an absurd size), so that one bad key is reported and skipped rather than failing every
    /// fetch. Pure.
    static func admissible(_ listing: [ObjectSummary], prefix: String, cache: String) -> (objects: [ObjectSummary], refused: [String]) {
        var objects: [ObjectSummary] = []
        var refused: [String] = []
        for object in listing {
            if cachePath(of: object.key, prefix: prefix, cacheDirectory: cache) == nil {
                refused.append("'\(object.key)': the key does not map to a safe path under the cache (empty, '.' or '..' segments, or outside the prefix)")
            } else if object.size > maximumObjectSize {
                refused.append("'\(object.key)': its listed size \(object.size) is beyond the \(maximumObjectSize) bytes caid stores")
            } else {
                objects.append(object)
            }
        }
        return (objects, refused)
    }

    /// Whether this fetcher feeds a streaming mount (``Options/streaming``).
    public var streams: Bool { options.streaming != nil }

    /// Beside the cache directory, not in it, so the mount never sees them.
    var manifestPath: String { cache + ".manifest.json" }
    var stagingRoot: String { cache + ".staging" }

    private let client: OSSClient
    private let prefix: String
    private let cache: String
    private let options: Options
    let logger: Logger

    public init(client: OSSClient, prefix: String, cacheDirectory: String, options: Options = Options(), logger: Logger) {
        self.client = client
        self.prefix = prefix.isEmpty || prefix.hasSuffix("/") ? prefix : prefix + "/"
        self.cache = cacheDirectory
        self.options = options
        self.logger = logger
    }

    /// Runs one complete fetch.
    /// - Parameters:
    ///   - streamable: with ``Options/streaming``, called once the listing is checked, the small objects are
    ///     verified and every other object has its full-size staging file under its final name: a mount may start.
    ///     The run goes on downloading, readers' parts first, and returns when every object is verified.
    ///   - progress: bytes verified so far and the total to fetch.
    public func run(
        streamable: @escaping @Sendable (Summary) async -> Void = { _ in },
        progress: @escaping @Sendable (UInt64, UInt64) async -> Void = { _, _ in }
    ) async throws -> Summary {
        options.streaming?.runStarted()
        var complete = false
        defer { options.streaming?.runEnded(complete: complete) }
        try makeDirectory(cache)
        var (listing, refused) = Self.admissible(try await client.list(prefix: prefix).filter { !$0.key.hasSuffix("/") }, prefix: prefix, cache: cache)
        var manifest = Manifest.decode((try? Data(contentsOf: URL(fileURLWithPath: manifestPath))) ?? Data())
        // The model manifest first: it decides which objects belong to the model and what their bytes must be.
        let model = try await modelManifest(in: &listing, refused: &refused)
        var summary = Summary()
        summary.objects = listing.count
        summary.refused = refused
        summary.modelDigest = model?.digest
        for line in refused.prefix(20) { logger.error("not fetching \(line)") }
        if refused.count > 20 { logger.error("not fetching \(refused.count - 20) more objects the bucket lists") }

        for key in manifest.stale(comparedWith: listing) {
            if let path = try? localPath(key) { unlink(path) }
            manifest.entries[key] = nil
            summary.removed += 1
        }
        // What the cache already holds, checked again where its stamp changed: whole files read and hashed, so off
        // the cooperative pool.
        let (kept, listed) = (manifest, listing)
        let (pending, checked, skipped) = try await Blocking.run { () throws -> ([ObjectSummary], Manifest, Int) in
            var manifest = kept
            var pending: [ObjectSummary] = []
            var skipped = 0
            for object in listed {
                let path = try localPath(object.key)
                var info = stat()
                if manifest.isComplete(object), stat(path, &info) == 0, UInt64(info.st_size) == object.size,
                    let entry = manifest.entries[object.key], stillVerified(object.key, path: path, entry: entry, in: &manifest),
                    try matchesModel(object.key, path: path, model: model, in: &manifest) {
                    skipped += 1
                } else {
                    manifest.entries[object.key] = nil
                    pending.append(object)
                }
            }
            return (pending, manifest, skipped)
        }
        manifest = checked
        summary.skipped += skipped
        try saveManifest(manifest)
        let total = try Self.totalSize(of: pending, prefix: prefix)
        let done = ByteCounter()
        await progress(0, total)
        let report: @Sendable (UInt64) async -> Void = { bytes in await progress(done.add(bytes), total) }

        if let streaming = options.streaming {
            let whole = pending.filter(Self.fetchedWhole)
            let streamed = pending.filter { !Self.fetchedWhole($0) }
            try await fetchObjects(whole, manifest: &manifest, model: model, report: report)
            for object in streamed { try prepareStreaming(object, in: streaming) }
            await streamable(summary)
            // Readers' parts meanwhile come from ``serveWaitingReads()``, which outlives this run.
            try await fetchObjects(
                streamed, concurrency: min(options.concurrency, Self.streamedObjectConcurrency), inOrder: true, manifest: &manifest, model: model,
                report: report)
        } else {
            try await fetchObjects(pending, manifest: &manifest, model: model, report: report)
        }
        summary.downloaded = pending.count
        summary.bytes = total
        summary.removed += reconcile(keys: listing.map(\.key))
        complete = true
        return summary
    }

    /// Fetches `objects`, several at once (small files), each with its parts in parallel, recording each verified
    /// one in `manifest`.
    /// - Parameter concurrency: objects at once (``Options/concurrency`` when nil).
    /// - Parameter inOrder: start an object only once every part of the one before it is under way.
    private func fetchObjects(
        _ objects: [ObjectSummary], concurrency: Int? = nil, inOrder: Bool = false, manifest: inout Manifest, model: ModelManifest?,
        report: @escaping @Sendable (UInt64) async -> Void
    ) async throws {
        let concurrency = concurrency ?? options.concurrency
        // The manifest is written at most once a second and at the end: a crash loses only objects verified since,
        // which are fetched again.
        try await withThrowingTaskGroup(of: (String, Manifest.Entry).self) { group in
            var running = 0
            var lastSave = ContinuousClock.now
            func record(_ result: (String, Manifest.Entry)) throws {
                manifest.entries[result.0] = result.1
                if ContinuousClock.now - lastSave >= .seconds(1) {
                    try saveManifest(manifest)
                    lastSave = .now
                }
            }
            var previousTail: Doorbell?
            var remaining = objects[...]
            while !remaining.isEmpty {
                if running >= concurrency, let finished = try await group.next() {
                    try record(finished)
                    running -= 1
                }
                // Rung when the object before has claimed its last part, or ended: its tail, not its end.
                await previousTail?.wait()
                try Task.checkCancellation()
                let object = nextObject(from: &remaining, inOrder: inOrder)
                let tail = inOrder ? Doorbell() : nil
                previousTail = tail
                group.addTask {
                    defer { tail?.ring() }
                    var entry = try await self.fetchObject(object, report: report, tail: tail)
                    let path = String(object.key.dropFirst(self.prefix.count))
                    let streaming = self.options.streaming
                    let generation = streaming?.generation(of: path)
                    do {
                        // A whole object read and hashed: seconds per GiB, off the cooperative pool.
                        entry.sha256 = try await Blocking.run { try self.checkAgainstModel(object.key, model: model) }
                    } catch {
                        if let streaming, let generation { streaming.corrupt(path, generation: generation, reason: "\(error)") }
                        throw error
                    }
                    if let streaming, let generation { streaming.verified(path, generation: generation) }
                    return (object.key, entry)
                }
                running += 1
            }
            do {
                while let finished = try await group.next() { try record(finished) }
            } catch {
                try? saveManifest(manifest)
                throw error
            }
            try saveManifest(manifest)
        }
    }

    /// Where the prefix's model manifest is: beside it (`models:/qwen` → `qwen.caid-manifest.json`), outside the
    /// volume, so that `gocryptfs -fsck` does not take it for a damaged name.
    public static func manifestKey(prefix: String) -> String {
        ModelManifest.location(beside: prefix)
    }

    /// Fetches and parses the prefix's model manifest and holds the listing to it: objects it does not list are
    /// refused (named, not stored), and one it lists that the bucket lacks or holds at another size fails the fetch.
    /// - Returns: nil when the prefix has no manifest and none is required.
    private func modelManifest(in listing: inout [ObjectSummary], refused: inout [String]) async throws -> ModelManifest? {
        let key = Self.manifestKey(prefix: prefix)
        listing.removeAll { $0.key == key }
        guard let object = try await client.list(prefix: key).first(where: { $0.key == key }) else {
            if options.requireManifest {
                throw FetchError.manifest("\(key) is not in the bucket, and CAID_MODEL_MANIFEST=required; upload the manifest caid encrypt or caid manifest wrote")
            }
            return nil
        }
        guard object.size <= UInt64(ModelManifest.maximumSize) else {
            throw FetchError.manifest("\(key) is \(object.size) bytes; a model manifest is at most \(ModelManifest.maximumSize)")
        }
        let bytes = try await manifestBytes(object)
        let model: ModelManifest
        do {
            model = try ModelManifest.parse(bytes)
        } catch {
            throw FetchError.manifest("\(key) in the bucket: \(error.message)")
        }
        let names = listing.map { (name: String($0.key.dropFirst(prefix.count)), size: $0.size) }
        let (missing, unlisted, resized) = model.compare(listing: names)
        guard missing.isEmpty else {
            throw FetchError.manifest("the model manifest (\(model.digest)) lists \(missing.count) objects the bucket does not have under \(prefix): " + missing.prefix(5).joined(separator: ", "))
        }
        guard resized.isEmpty else {
            throw FetchError.manifest("the bucket's objects differ from the model manifest (\(model.digest)): " + resized.prefix(5).joined(separator: "; "))
        }
        let outside = Set(unlisted.map { prefix + $0 })
        listing.removeAll { outside.contains($0.key) }
        refused += unlisted.map { "'\(prefix + $0)': the model manifest (\(model.digest)) does not list it" }
        return model
    }

    /// Beside the cache: the model manifest as last downloaded, under its ETag, so a restart does not fetch it again.
    var modelManifestPath: String { cache + ".model-manifest.json" }

    /// The manifest's bytes: the copy beside the cache when its ETag and size are the listed ones, else downloaded
    /// (checked against OSS's size and CRC-64) and kept there. Its content is checked by parsing either way.
    private func manifestBytes(_ object: ObjectSummary) async throws -> [UInt8] {
        let etagPath = modelManifestPath + ".etag"
        if let kept = FileManager.default.contents(atPath: modelManifestPath), UInt64(kept.count) == object.size,
            FileManager.default.contents(atPath: etagPath).map({ String(decoding: $0, as: UTF8.self) }) == object.etag {
            return Array(kept)
        }
        let response = try await client.get(object.key, range: nil, ifMatch: object.etag)
        var bytes: [UInt8] = []
        var crc = CRC64()
        for try await buffer in response.body {
            guard bytes.count + buffer.readableBytes <= Int(object.size) else { throw FetchError.verification("\(object.key): more bytes than its listed \(object.size)") }
            buffer.withUnsafeReadableBytes { crc.update($0) }
            bytes += buffer.readableBytesView
        }
        guard UInt64(bytes.count) == object.size, let serverCRC = response.headers.first(name: "x-oss-hash-crc64ecma").flatMap({ UInt64($0) }), serverCRC == crc.value else {
            throw FetchError.verification("\(object.key): the download does not match OSS's size and CRC-64; fetching again")
        }
        // Best effort: without the copy the next start downloads it again.
        if FileManager.default.createFile(atPath: modelManifestPath, contents: Data(bytes)) {
            _ = FileManager.default.createFile(atPath: etagPath, contents: Data(object.etag.utf8))
        }
        return bytes
    }

    /// Whether a cached file has the SHA-256 the model manifest gives it (read again only when the recorded one is
    /// not that). True when there is no manifest, and for the manifest itself.
    private func matchesModel(_ key: String, path: String, model: ModelManifest?, in manifest: inout Manifest) throws -> Bool {
        guard let model, let expected = model.object(named: String(key.dropFirst(prefix.count))) else { return true }
        let wanted = SignerV4.hex(expected.sha256)
        if manifest.entries[key]?.sha256 == wanted { return true }
        guard try Self.sha256(ofFileAt: path) == expected.sha256 else {
            logger.warning("\(key): the cached file is not the one the model manifest (\(model.digest)) describes; fetching it again")
            return false
        }
        manifest.entries[key]?.sha256 = wanted
        return true
    }

    /// Checks a freshly verified object against the model manifest; removes it and fails the fetch when its bytes
    /// are not the manifest's (a CRC-64 only says OSS sent what it holds; whoever can write the bucket can make both
    /// match). - Returns: the SHA-256 (hex) it has, for the cache's record; nil without a manifest.
    private func checkAgainstModel(_ key: String, model: ModelManifest?) throws -> String? {
        guard let model, let expected = model.object(named: String(key.dropFirst(prefix.count))) else { return nil }
        let path = try localPath(key)
        let actual = try Self.sha256(ofFileAt: path)
        guard actual == expected.sha256 else {
            unlink(path)
            throw FetchError.manifest("\(key): its SHA-256 \(SignerV4.hex(actual)) is not \(SignerV4.hex(expected.sha256)), which the model manifest (\(model.digest)) gives it: the bucket holds bytes other than the model that was measured (who else can write it?)")
        }
        return SignerV4.hex(actual)
    }

    /// Whether a cached file is still the one verified: its stamp is unchanged, or its bytes on disk still have the
    /// recorded CRC-64 (then the new stamp is recorded). A file changed since (rewritten, or swapped with another by
    /// a rename) is fetched again.
    private func stillVerified(_ key: String, path: String, entry: Manifest.Entry, in manifest: inout Manifest) -> Bool {
        let stamp = FileStamp.of(path)
        if let stamp, stamp == entry.file { return true }
        guard (try? Self.crc64(ofFileAt: path)) == entry.crc64 else {
            logger.warning("\(key): the cached file changed after it was verified; fetching it again")
            return false
        }
        manifest.entries[key]?.file = stamp
        return true
    }

    /// Makes the cache hold exactly the listed objects, each verified: a file renamed into place before a crash
    /// let the manifest record it, an object since deleted from the bucket, debris of a damaged manifest, links,
    /// and staging files of objects no longer listed are all removed (and logged), so the mount serves nothing else.
    /// Runs after every object verified, so every listed object is in the manifest by then.
    /// - Returns: how many entries were removed.
    func reconcile(keys: [String]) -> Int {
        var expected: Set<String> = []
        var directories: Set<String> = [cache]
        for key in keys {
            guard let path = try? localPath(key) else { continue }
            expected.insert(path)
            var parent = PathText.parent(of: path)
            while parent.count > cache.count, directories.insert(parent).inserted {
                parent = PathText.parent(of: parent)
            }
        }
        var removed: [String] = []
        var emptyCandidates: [String] = []
        let fm = FileManager.default
        // A walk of our own that descends only into real directories (lstat), so that a link in the cache can never
        // lead the removal outside it.
        var queue = [cache]
        while let directory = queue.popLast() {
            for name in (try? fm.contentsOfDirectory(atPath: directory)) ?? [] {
                let path = directory + "/" + name
                var info = stat()
                guard lstat(path, &info) == 0 else { continue }
                switch info.st_mode & S_IFMT {
                case S_IFDIR:
                    queue.append(path)
                    if !directories.contains(path) { emptyCandidates.append(path) }
                case S_IFREG where expected.contains(path):
                    continue
                default:
                    // Not a listed object: a regular file, a link (the fetcher never makes one), a device, a FIFO.
                    if unlink(path) == 0 { removed.append(String(path.dropFirst(cache.count + 1))) }
                }
            }
        }
        // Deepest first, so that emptied parents go too; a directory that still holds something is left.
        for path in emptyCandidates.sorted(by: { $0.count > $1.count }) where rmdir(path) == 0 {
            removed.append(String(path.dropFirst(cache.count + 1)) + "/")
        }
        // Every listed object is in place: what is left in the staging area belongs to none.
        if let leftovers = try? fm.contentsOfDirectory(atPath: stagingRoot), !leftovers.isEmpty {
            try? fm.removeItem(atPath: stagingRoot)
            removed.append(contentsOf: leftovers.map { "(staging) " + $0 })
        }
        for entry in removed.prefix(20) {
            logger.warning("removed \(entry) from the cache: not an object the bucket lists")
        }
        if removed.count > 20 { logger.warning("removed \(removed.count - 20) more entries from the cache that the bucket does not list") }
        return removed.count
    }

    /// Where an object lives in the cache; refuses keys that would leave it.
    func localPath(_ key: String) throws -> String {
        guard let path = Self.cachePath(of: key, prefix: prefix, cacheDirectory: cache) else {
            throw FetchError.verification("object key '\(key)' does not map to a safe path under the cache; refusing it")
        }
        return path
    }

    /// Where object `key` lives in the cache, or nil when the key would leave it (`..`, empty segments, another prefix).
    /// - Parameter prefix: the bucket prefix, empty or ending in `/`.
    public static func cachePath(of key: String, prefix: String, cacheDirectory: String) -> String? {
        let relative = String(key.dropFirst(prefix.count))
        let parts = relative.split(separator: "/", omittingEmptySubsequences: false)
        guard key.hasPrefix(prefix), !relative.isEmpty, !parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) else { return nil }
        return cacheDirectory + "/" + relative
    }

    /// The next object to start: in order, the one a streaming mount's reader last jumped to, if it is among them;
    /// else the first.
    private func nextObject(from remaining: inout ArraySlice<ObjectSummary>, inOrder: Bool) -> ObjectSummary {
        if inOrder, let wanted = options.streaming?.lastJumpedTo,
            let index = remaining.firstIndex(where: { $0.key.dropFirst(prefix.count) == wanted }) {
            return remaining.remove(at: index)
        }
        return remaining.removeFirst()
    }

    /// Downloads one object into the staging area, verifies it and moves it into place; restarts it once if it
    /// changed on the server while being fetched.
    /// - Parameter tail: rung once every part of the object is under way.
    private func fetchObject(_ object: ObjectSummary, report: @escaping @Sendable (UInt64) async -> Void, tail: Doorbell?) async throws -> Manifest.Entry {
        do {
            return try await fetchOnce(object, report: report, tail: tail)
        } catch FetchError.changed(let message) {
            logger.warning("\(message); fetching it again")
            guard let fresh = try await client.list(prefix: object.key).first(where: { $0.key == object.key }) else {
                throw FetchError.changed("\(object.key) disappeared from the bucket during the download")
            }
            // A streamed object gets a new copy (a new generation) that its readers open again.
            if let streaming = options.streaming, !Self.fetchedWhole(fresh) { try prepareStreaming(fresh, in: streaming) }
            return try await fetchOnce(fresh, report: report, tail: tail)
        }
    }

    /// The recorded parts whose bytes in the staging file no longer have their recorded CRC-64.
    static func partsNotOnDisk(_ plan: DownloadPlan, crcs: [Int: UInt64], fd: Int32, path: String) throws(FetchError) -> [Int] {
        var lost: [Int] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        for part in plan.parts {
            guard let recorded = crcs[part.index] else { continue }
            var crc = CRC64()
            var done: UInt64 = 0
            while done < part.length {
                let want = Int(min(UInt64(buffer.count), part.length - done))
                let read = buffer.withUnsafeMutableBytes { bytes in
                    Result { () throws(FileIO.Failure) in try FileIO.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: bytes[0..<want]), at: part.offset + done) }
                }
                let n: Int
                switch read {
                case .success(let count): n = count
                case .failure(let error): throw FetchError.cache("\(path): cannot re-read a kept part: \(error)")
                }
                if n == 0 { break }
                buffer.withUnsafeBytes { crc.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                done += UInt64(n)
            }
            if done != part.length || crc.value != recorded { lost.append(part.index) }
        }
        return lost
    }

    /// The staging file and checkpoint of an object, beside its place in the cache.
    private func stagingPaths(_ object: ObjectSummary) throws -> (final: String, staging: String, checkpoint: String) {
        let finalPath = try localPath(object.key)
        let stagingPath = stagingRoot + "/" + String(object.key.dropFirst(prefix.count))
        try makeDirectory(PathText.parent(of: stagingPath))
        try makeDirectory(PathText.parent(of: finalPath))
        return (finalPath, stagingPath, stagingPath + ".parts")
    }

    /// Opens the staging file at its full size, keeping the parts a killed or failed earlier run wrote and checked
    /// when they are still intact on disk. - Returns: its descriptor and the checkpoint of what it holds.
    /// - Parameter streamed: the file a streaming ledger tracks now: opened as it is (its parts are the ledger's).
    private func openStaging(_ object: ObjectSummary, staging stagingPath: String, checkpoint checkpointPath: String, streamed: UInt64? = nil) throws -> (fd: Int32, checkpoint: Checkpoint) {
        var checkpoint = Checkpoint(object: object, partSize: options.partSize)
        var info = stat()
        if let streamed, stat(stagingPath, &info) == 0, UInt64(info.st_ino) == streamed, UInt64(info.st_size) == object.size {
            let fd = open(stagingPath, O_RDWR | O_CLOEXEC)
            if fd >= 0 { return (fd, checkpoint) }
        }
        // A staging file shorter than the object is kept too (a power loss can cut it): the re-check below finds
        // which recorded parts survived.
        if let data = try? Data(contentsOf: URL(fileURLWithPath: checkpointPath)), let saved = try? JSONDecoder().decode(Checkpoint.self, from: data),
            saved.matches(object: object, partSize: options.partSize), stat(stagingPath, &info) == 0, UInt64(info.st_size) <= object.size {
            checkpoint = saved
        }
        let resumed = !checkpoint.crcs.isEmpty
        let fd = open(stagingPath, O_RDWR | O_CREAT | O_CLOEXEC | (resumed ? 0 : O_TRUNC), 0o644)
        guard fd >= 0 else { throw FetchError.cache("\(stagingPath): \(String(cString: strerror(errno)))") }
        guard ftruncate(fd, off_t(object.size)) == 0 else {
            close(fd)
            throw FetchError.cache("\(stagingPath): cannot reserve \(object.size) bytes")
        }
        if resumed {
            // The checkpoint was written after pwrite, not after the bytes reached the disk: after a power loss a
            // part recorded as done can be zeros or gone. Only parts whose bytes on disk still have their recorded
            // CRC-64 are kept.
            let plan = DownloadPlan(object: object, partSize: options.partSize)
            let lost: [Int]
            do {
                lost = try Self.partsNotOnDisk(plan, crcs: checkpoint.crcs, fd: fd, path: stagingPath)
            } catch {
                close(fd)
                throw error
            }
            if !lost.isEmpty {
                logger.warning("\(object.key): \(lost.count) part(s) recorded as done were not on disk intact (a crash before they were written out); downloading them again")
                for index in lost { checkpoint.crcs[index] = nil }
            }
            logger.info("resuming \(object.key): \(checkpoint.crcs.count) of \(plan.parts.count) parts already here")
        }
        return (fd, checkpoint)
    }

    /// Makes an object readable by a streaming mount before it has arrived: its staging file at full size, linked
    /// under its final name (the same inode, so the bytes appear there as they are written, and the rename at the
    /// end changes nothing a reader holds), and registered with what is already in it.
    private func prepareStreaming(_ object: ObjectSummary, in streaming: StreamingDownload) throws {
        let paths = try stagingPaths(object)
        let path = String(object.key.dropFirst(prefix.count))
        let (fd, checkpoint) = try openStaging(
            object, staging: paths.staging, checkpoint: paths.checkpoint, streamed: streaming.streamingFile(path, object: object))
        var info = stat()
        let statted = fstat(fd, &info)
        close(fd)
        guard statted == 0 else { throw FetchError.cache("\(paths.staging): \(String(cString: strerror(errno)))") }
        let file = UInt64(info.st_ino)
        var linked = stat()
        if lstat(paths.final, &linked) != 0 || UInt64(linked.st_ino) != file {
            // Not verified (it is pending): whatever holds the name is stale. The new link replaces it by a rename,
            // so that a lookup through the mount never finds the name missing (a copy fetched again after a failed
            // check is listed all along).
            let linking = paths.staging + ".link"
            unlink(linking)
            guard link(paths.staging, linking) == 0 else {
                throw FetchError.cache("cannot link \(paths.staging) to \(linking): \(String(cString: strerror(errno)))")
            }
            guard rename(linking, paths.final) == 0 else {
                let reason = String(cString: strerror(errno))
                unlink(linking)
                throw FetchError.cache("cannot move \(linking) to \(paths.final): \(reason)")
            }
        }
        _ = streaming.stream(
            path: path, object: object, partSize: options.partSize, stagingPath: paths.staging, file: file,
            present: checkpoint.crcs)
    }

    /// Fetches the parts a streaming mount's readers wait for as soon as they ask, up to ``urgentConcurrency`` at a
    /// time beside the download's own requests, until cancelled. It runs beside the runs, not in them, so that a
    /// download that failed and waits to start again does not leave readers waiting too.
    public func serveWaitingReads() async {
        guard let streaming = options.streaming else { return }
        let report: @Sendable (UInt64) async -> Void = { _ in }
        await withDiscardingTaskGroup { group in
            while !Task.isCancelled {
                while streaming.takeLaneSlot(of: Self.urgentConcurrency) {
                    guard let request = streaming.claimUrgent() else {
                        streaming.freeLaneSlot(wake: false)
                        break
                    }
                    group.addTask {
                        await self.fetchUrgent(request, in: streaming, report: report)
                        streaming.freeLaneSlot(wake: true)
                    }
                }
                await streaming.urgentRequested()
            }
        }
    }

    /// One part a reader waits for, from OSS with the usual retries, into the object's staging file.
    private func fetchUrgent(_ request: StreamingLedger.Request, in streaming: StreamingDownload, report: @escaping @Sendable (UInt64) async -> Void) async {
        let fd = open(request.stagingPath, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else {
            streaming.partFailed(request.path, generation: request.generation, index: request.part.index, reason: "\(request.stagingPath): \(String(cString: strerror(errno)))")
            return
        }
        defer { close(fd) }
        do {
            let (crc, _) = try await fetchPart(request.part, of: request.object, into: fd, report: report)
            streaming.partArrived(request.path, generation: request.generation, index: request.part.index, crc: crc)
        } catch {
            logger.error("a read waits for \(request.object.key) \(request.part.rangeHeader), which could not be fetched: \(error)")
            streaming.partFailed(request.path, generation: request.generation, index: request.part.index, reason: "\(error)")
        }
    }

    private func fetchOnce(_ object: ObjectSummary, report: @escaping @Sendable (UInt64) async -> Void, tail: Doorbell?) async throws -> Manifest.Entry {
        let paths = try stagingPaths(object)
        let (finalPath, stagingPath, checkpointPath) = (paths.final, paths.staging, paths.checkpoint)
        let path = String(object.key.dropFirst(prefix.count))
        // Streamed: prepared before the mount, its parts in the ledger (the lane's too), shared with its readers.
        let streaming = options.streaming
        let generation = streaming?.generation(of: path)
        let (fd, kept) = try openStaging(
            object, staging: stagingPath, checkpoint: checkpointPath, streamed: streaming?.streamingFile(path, object: object))
        var closed = false
        defer { if !closed { close(fd) } }
        var tally = PartTally(plan: DownloadPlan(object: object, partSize: options.partSize), checkpoint: kept)
        if let streaming, let generation { tally.merge(fromOSS: streaming.present(path, generation: generation)) }
        if tally.presentBytes > 0 { await report(tally.presentBytes) }
        // ftruncate reserves no blocks: what is left to write must fit now. The parts kept stay for the next try.
        try Self.checkSpace(tally.missing.reduce(UInt64(0)) { $0 + $1.length }, at: stagingRoot)
        var queue = tally.missing[...]
        // The next part: one a reader waits for, else the next in order (a streamed object's ledger decides both).
        func nextPart() -> DownloadPlan.Part? {
            if let streaming, let generation { return streaming.claimNext(path, generation: generation)?.part }
            return queue.popFirst()
        }
        do {
            // A streamed object's parts may also come from the urgent lane: wait for those, and take back any the
            // lane failed to fetch.
            var rounds = 0
            repeat {
                rounds += 1
                try await withThrowingTaskGroup(of: PartTally.Arrival.self) { group in
                    var running = 0
                    func record(_ arrival: PartTally.Arrival) throws {
                        do {
                            try tally.record(arrival)
                        } catch {
                            throw FetchError.changed("\(object.key) reported two different CRC-64 values during one download (\(error.first), then \(error.second))")
                        }
                        try? JSONEncoder().encode(tally.checkpoint).write(to: URL(fileURLWithPath: checkpointPath), options: .atomic)
                    }
                    while true {
                        if running >= options.concurrency, let finished = try await group.next() {
                            try record(finished)
                            running -= 1
                        }
                        guard let part = nextPart() else {
                            tail?.ring()
                            break
                        }
                        let descriptor = fd
                        group.addTask {
                            do {
                                let arrival: PartTally.Arrival
                                if let (crc, peer) = try await self.fetchPartFromAlternate(part, of: object, into: descriptor, report: report) {
                                    arrival = PartTally.Arrival(index: part.index, crc: crc, peer: peer)
                                } else {
                                    let (crc, reported) = try await self.fetchPart(part, of: object, into: descriptor, report: report)
                                    arrival = PartTally.Arrival(index: part.index, crc: crc, serverCRC: reported)
                                }
                                if let streaming, let generation { streaming.partArrived(path, generation: generation, index: part.index, crc: arrival.crc) }
                                return arrival
                            } catch {
                                if let streaming, let generation { streaming.partFailed(path, generation: generation, index: part.index, reason: "\(error)") }
                                throw error
                            }
                        }
                        running += 1
                    }
                    while let finished = try await group.next() { try record(finished) }
                }
                if let streaming, let generation {
                    await streaming.settled(path, generation: generation)
                    try Task.checkCancellation()
                    tally.merge(fromOSS: streaming.present(path, generation: generation))
                }
            } while streaming != nil && generation != nil && rounds < 10 && !tally.missing.isEmpty
        } catch {
            // A changed object starts over; other failures keep the finished parts for the next attempt.
            if case FetchError.changed = error {
                discard(stagingPath, checkpointPath)
                // The final name stays (the file must not vanish from the mount); its readers get EIO until the new
                // copy is linked there.
                if let streaming, let generation {
                    streaming.corrupt(path, generation: generation, reason: "\(object.key) changed in the bucket during the download; it is fetched again")
                }
            }
            throw error
        }
        let combined: UInt64
        verifying: while true {
            switch tally.verdict {
            case .verified(let crc):
                combined = crc
                break verifying
            case .incomplete:
                throw FetchError.verification("\(object.key): a part is missing")
            case .needsServerCRC:
                // Every part came from peers, or the object is empty: OSS's CRC-64 still decides, asked for with a
                // one-byte range (a plain GET for an empty object, which has no byte to ask for).
                let response = try await client.get(object.key, range: tally.plan.parts.isEmpty ? nil : "bytes=0-0", ifMatch: object.etag)
                guard let crc = response.headers.first(name: "x-oss-hash-crc64ecma").flatMap({ UInt64($0) }) else {
                    throw FetchError.verification("\(object.key): OSS sent no x-oss-hash-crc64ecma; cannot verify it")
                }
                for try await _ in response.body {}
                tally.serverCRC(crc)
            case .recheck(let parts):
                // A peer's bytes are wrong: take every part a peer gave from OSS instead, and blame the peers whose
                // part differs from OSS's.
                for part in parts {
                    let (crc, _) = try await fetchPart(part, of: object, into: fd, report: { _ in })
                    if let peer = tally.rechecked(part.index, ossCRC: crc) {
                        logger.warning("sharing peer \(peer) served bytes of \(object.key) that do not match OSS's; avoiding it")
                        options.alternate?.distrust(peer, key: object.key)
                    }
                }
            case .mismatch(let actual, let expected):
                discard(stagingPath, checkpointPath)
                let failure = FetchError.verification("\(object.key): CRC-64 \(actual) does not match OSS's \(expected); the bytes were damaged or substituted")
                if let streaming, let generation {
                    // Its readers were served only blocks that authenticated; still, this copy is not OSS's object.
                    // Its name stays in the mount, refused (EIO), until the next copy is linked under it.
                    streaming.corrupt(path, generation: generation, reason: "\(failure); it is fetched again")
                }
                throw failure
            }
        }
        let descriptor = fd
        let syncError = await Blocking.run { () -> Int32 in fsync(descriptor) == 0 ? 0 : errno }
        guard syncError == 0 else {
            if syncError == ENOSPC || syncError == EDQUOT { throw FetchError.diskFull(needed: object.size, path: stagingPath) }
            throw FetchError.cache("\(stagingPath): fsync failed: \(String(cString: strerror(syncError)))")
        }
        close(fd)
        closed = true
        unlink(checkpointPath)
        guard rename(stagingPath, finalPath) == 0 else {
            unlink(stagingPath)
            throw FetchError.cache("cannot move \(object.key) into \(finalPath): \(String(cString: strerror(errno)))")
        }
        // A streamed object's final name is already a link to this file, and then rename does nothing (POSIX).
        if access(stagingPath, F_OK) == 0 { unlink(stagingPath) }
        logger.info("verified \(object.key)", metadata: ["size": "\(object.size)", "crc64": "\(combined)"])
        var entry = Manifest.Entry(size: object.size, etag: object.etag, crc64: combined)
        entry.file = FileStamp.of(finalPath)
        return entry
    }

    /// Tries the alternate source (a sharing peer) for one range; returns its CRC-64 and who gave it, or nil when
    /// OSS must be asked.
    private func fetchPartFromAlternate(
        _ part: DownloadPlan.Part, of object: ObjectSummary, into fd: Int32, report: @escaping @Sendable (UInt64) async -> Void
    ) async throws -> (UInt64, String)? {
        guard let alternate = options.alternate, part.length > 0,
            let (bytes, peer) = await alternate.fetch(key: object.key, etag: object.etag, range: part.offset...(part.offset + part.length - 1)),
            bytes.count == Int(part.length)
        else { return nil }
        var crc = CRC64()
        try bytes.withUnsafeBytes { buffer in
            crc.update(buffer)
            try Self.write(buffer, to: fd, at: part.offset, key: object.key)
        }
        await report(part.length)
        return (crc.value, peer)
    }

    /// Fetches one range with retries; returns its CRC-64 and the object CRC OSS reported.
    private func fetchPart(
        _ part: DownloadPlan.Part, of object: ObjectSummary, into fd: Int32, report: @escaping @Sendable (UInt64) async -> Void
    ) async throws -> (UInt64, UInt64?) {
        do {
            return try await OSSClient.retrying("\(object.key) \(part.rangeHeader)", attempts: options.attempts, logger: logger) {
                try await self.fetchPartOnce(part, of: object, into: fd, report: report)
            }
        } catch FetchError.oss(let error, _) where error.status == 412 {
            throw FetchError.changed("\(object.key) changed on the server during the download")
        }
    }

    private func fetchPartOnce(
        _ part: DownloadPlan.Part, of object: ObjectSummary, into fd: Int32, report: @escaping @Sendable (UInt64) async -> Void
    ) async throws -> (UInt64, UInt64?) {
        let response = try await client.get(object.key, range: part.rangeHeader, ifMatch: object.etag)
        guard response.status.code == 206 || (response.status.code == 200 && part.offset == 0 && part.length == object.size) else {
            throw FetchError.transport("\(object.key): expected 206 for \(part.rangeHeader), got \(response.status.code)")
        }
        var crc = CRC64()
        var written: UInt64 = 0
        for try await buffer in response.body {
            guard written + UInt64(buffer.readableBytes) <= part.length else {
                throw FetchError.transport("\(object.key): more bytes than asked for in \(part.rangeHeader)")
            }
            try buffer.withUnsafeReadableBytes { bytes in
                crc.update(bytes)
                try Self.write(bytes, to: fd, at: part.offset + written, key: object.key)
            }
            written += UInt64(buffer.readableBytes)
        }
        guard written == part.length else {
            throw FetchError.transport("\(object.key): \(part.rangeHeader) ended after \(written) of \(part.length) bytes")
        }
        // Write the part back now, in the background: the fsync before the rename then finds little left to write,
        // instead of a whole object's worth at the end of the download (seconds per GiB on this kind of disk).
        _ = caid_start_write_back(fd, Int64(part.offset), Int64(part.length))
        await report(part.length)
        return (crc.value, response.headers.first(name: "x-oss-hash-crc64ecma").flatMap { UInt64($0) })
    }

    /// Writes all of `bytes` at `offset` of the staging file.
    private static func write(_ bytes: UnsafeRawBufferPointer, to fd: Int32, at offset: UInt64, key: String) throws {
        do {
            try FileIO.write(fd, bytes, at: offset)
        } catch where error.isNoSpace {
            throw FetchError.diskFull(needed: UInt64(bytes.count), path: "the staging file of \(key)")
        } catch {
            throw FetchError.cache("cannot write \(key): \(error)")
        }
    }

    /// Throws ``FetchError/diskFull(needed:path:)`` when the filesystem of `path` has less room than `needed`
    /// bytes: better said before the download than found half way through it.
    static func checkSpace(_ needed: UInt64, at path: String) throws(FetchError) {
        var info = statvfs()
        guard needed > 0, statvfs(path, &info) == 0 else { return }
        let available = UInt64(info.f_bavail) * UInt64(info.f_frsize)
        if available < needed { throw FetchError.diskFull(needed: needed - available, path: path) }
    }

    private func discard(_ paths: String...) {
        for path in paths { unlink(path) }
    }

    private func saveManifest(_ manifest: Manifest) throws {
        let path = manifestPath
        let temporary = path + ".tmp"
        do {
            try manifest.encoded().write(to: URL(fileURLWithPath: temporary))
        } catch {
            throw FetchError.cache("cannot write \(temporary): \(error.localizedDescription)")
        }
        guard rename(temporary, path) == 0 else { throw FetchError.cache("cannot replace \(path): \(String(cString: strerror(errno)))") }
    }

    private func makeDirectory(_ path: String) throws {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw FetchError.cache("cannot create \(path): \(error.localizedDescription)")
        }
    }
}

/// A running byte total shared by concurrent downloads.
final class ByteCounter: Sendable {
    private let total = Mutex<UInt64>(0)

    /// Adds and returns the new total.
    func add(_ bytes: UInt64) -> UInt64 {
        total.withLock { value in
            value += bytes
            return value
        }
    }
}
