/// What a streaming mount knows of the objects still arriving, as a pure value: each object's parts (missing,
/// being fetched, on disk with their CRC-64), the parts readers wait for, in the order they asked, and which part to
/// fetch next. The fetcher, its urgent lane and the mount's readers act on what it returns (``StreamingDownload``
/// holds it behind a lock).
///
/// A part on disk is not yet verified: only the object's CRC-64 (and its manifest SHA-256) at the end says the whole
/// is OSS's. Readers may still take it, because the mount authenticates every 4 KiB block it serves (AES-GCM with the
/// block number and file ID as data, gocryptfs's content format) and refuses all-zero blocks.
public struct StreamingLedger: Sendable {
    /// One part of an object.
    public enum PartState: Sendable, Equatable {
        case missing
        case fetching
        case present(crc: UInt64)
    }

    /// Where an object is.
    public enum ObjectState: Sendable, Equatable {
        /// Parts arrive; readers wait for the ones they need.
        case streaming
        /// Complete, and its CRC-64 (and SHA-256) matched.
        case verified
        /// The complete object did not verify: readers of this copy get EIO, a new copy is fetched.
        case corrupt(String)
    }

    /// A part to fetch, with what the fetch needs.
    public struct Request: Sendable, Equatable {
        public var path: String
        public var object: ObjectSummary
        public var part: DownloadPlan.Part
        public var generation: UInt64
        public var stagingPath: String
    }

    /// What a reader of a range gets told.
    public enum Need: Sendable, Equatable {
        case ready
        case unavailable(String)
        /// Wait for a change. `requested`: a part was just put on the urgent queue (wake the lane).
        case wait(requested: Bool)
    }

    struct Object: Sendable {
        var object: ObjectSummary
        var stagingPath: String
        /// The staging file's inode: the same file across a restart of the fetch keeps its parts and readers.
        var file: UInt64
        var plan: DownloadPlan
        var generation: UInt64
        var state: ObjectState
        var parts: [PartState]
        /// The ledger's failure count when each part last failed; readers that started waiting before then fail too.
        var failedAt: [Int: UInt64] = [:]
        var lastFailure: String?
    }

    /// Parts queued after the ones a reader waits for: a sequential reader finds its next bytes under way.
    public static let readahead = 8

    private(set) var objects: [String: Object] = [:]
    private var urgent: [(path: String, index: Int)] = []
    private var nextGeneration: UInt64 = 1
    /// Counts part failures, so that a waiter knows whether one happened since it began.
    private(set) var failures: UInt64 = 0
    /// The object a reader last had to wait for because its bytes were not even asked for: the download starts
    /// that one next, before the rest in listing order (the listing is of encrypted names, so its order is not
    /// the order a model loader reads in).
    public private(set) var lastJumpedTo: String?
    /// Readers blocked now.
    public var waitingReads = 0

    public init() {}

    /// Starts (or continues) streaming `object` from its staging file at `stagingPath`, whose inode is `file`.
    /// A known object with the same file and version keeps its generation and the parts it has; otherwise this is a
    /// new copy (a new generation) with the parts in `present`. - Returns: the generation.
    public mutating func stream(path: String, object: ObjectSummary, partSize: UInt64, stagingPath: String, file: UInt64, present: [Int: UInt64]) -> UInt64 {
        if var known = objects[path], known.state == .streaming, known.file == file, known.object == object, known.plan.partSize == partSize {
            for (index, crc) in present where index < known.parts.count && known.parts[index] == .missing {
                known.parts[index] = .present(crc: crc)
            }
            known.stagingPath = stagingPath
            objects[path] = known
            return known.generation
        }
        let plan = DownloadPlan(object: object, partSize: partSize)
        let parts = plan.parts.map { part in present[part.index].map { PartState.present(crc: $0) } ?? .missing }
        let generation = nextGeneration
        nextGeneration += 1
        objects[path] = Object(object: object, stagingPath: stagingPath, file: file, plan: plan, generation: generation, state: .streaming, parts: parts)
        urgent.removeAll { $0.path == path }
        return generation
    }

    /// The staging file (inode) that streams `object` at `path` now, if one does.
    public func streamingFile(_ path: String, object: ObjectSummary) -> UInt64? {
        guard let entry = objects[path], entry.state == .streaming, entry.object == object else { return nil }
        return entry.file
    }

    /// The generation of `path`'s current copy; nil for a file that was not streamed (complete before the mount).
    public func generation(of path: String) -> UInt64? {
        objects[path]?.generation
    }

    /// Whether ciphertext bytes `range` of the copy `generation` of `path` may be read now. Missing parts are put on
    /// the urgent queue. `since`: the failure count when this reader began waiting (set on its first call).
    public mutating func need(_ path: String, range: Range<UInt64>, generation: UInt64, since: inout UInt64?) -> Need {
        let started = since ?? failures
        since = started
        guard let entry = objects[path] else { return .ready }
        guard entry.generation == generation else {
            return .unavailable("\(path) was fetched again after this file was opened (its earlier copy did not verify); open it again")
        }
        switch entry.state {
        case .verified: return .ready
        case .corrupt(let reason): return .unavailable(reason)
        case .streaming: break
        }
        guard !range.isEmpty, entry.plan.partSize > 0 else { return .ready }
        let first = Int(range.lowerBound / entry.plan.partSize)
        let last = Int((min(range.upperBound, entry.object.size) - 1) / entry.plan.partSize)
        guard first <= last, last < entry.parts.count else { return .ready }
        var requested = false
        var complete = true
        var jumped = false
        for index in first...last {
            switch entry.parts[index] {
            case .present: continue
            case .fetching: complete = false
            case .missing:
                complete = false
                jumped = true
                if let failed = entry.failedAt[index], failed > started {
                    return .unavailable("\(entry.object.key) bytes \(entry.plan.parts[index].rangeHeader.dropFirst(6)) could not be fetched: \(entry.lastFailure ?? "failed")")
                }
                if enqueue(path, index) { requested = true }
            }
        }
        guard !complete else { return .ready }
        // Readahead only for a reader ahead of the download: one that waits for parts already in flight follows
        // the download, and more parts in flight would only share the bandwidth with the one it waits for.
        guard jumped else { return .wait(requested: requested) }
        lastJumpedTo = path
        for index in (last + 1)..<min(entry.parts.count, last + 1 + Self.readahead) where entry.parts[index] == .missing {
            if enqueue(path, index) { requested = true }
        }
        return .wait(requested: requested)
    }

    private mutating func enqueue(_ path: String, _ index: Int) -> Bool {
        guard !urgent.contains(where: { $0.path == path && $0.index == index }) else { return false }
        urgent.append((path, index))
        return true
    }

    /// The next urgent part of any object, marked as being fetched.
    public mutating func claimUrgent() -> Request? {
        while !urgent.isEmpty {
            let (path, index) = urgent.removeFirst()
            if let request = claim(path, index: index) { return request }
        }
        return nil
    }

    /// The next part the object's own download should fetch: one a reader waits for, else the first missing one;
    /// nil when none is missing (some may still be under way elsewhere).
    ///
    /// The download does not pause for readers: it keeps the link full, and the urgent lane adds their parts beside
    /// it. (Pausing it while readers waited left only the lane's requests in flight, and the whole took longer.)
    public mutating func claimNext(_ path: String, generation: UInt64) -> Request? {
        guard let entry = objects[path], entry.generation == generation, entry.state == .streaming else { return nil }
        while let position = urgent.firstIndex(where: { $0.path == path }) {
            let index = urgent.remove(at: position).index
            if let request = claim(path, index: index) { return request }
        }
        guard let index = entry.parts.firstIndex(of: .missing) else { return nil }
        return claim(path, index: index)
    }

    private mutating func claim(_ path: String, index: Int) -> Request? {
        guard var entry = objects[path], entry.state == .streaming, index < entry.parts.count, entry.parts[index] == .missing else { return nil }
        entry.parts[index] = .fetching
        objects[path] = entry
        return Request(path: path, object: entry.object, part: entry.plan.parts[index], generation: entry.generation, stagingPath: entry.stagingPath)
    }

    /// How many parts of the copy are being fetched now (by anyone).
    public func fetching(_ path: String, generation: UInt64) -> Int {
        guard let entry = objects[path], entry.generation == generation else { return 0 }
        return entry.parts.count { $0 == .fetching }
    }

    /// The parts of the copy on disk, with their CRC-64s.
    public func present(_ path: String, generation: UInt64) -> [Int: UInt64] {
        guard let entry = objects[path], entry.generation == generation else { return [:] }
        var crcs: [Int: UInt64] = [:]
        for (index, state) in entry.parts.enumerated() {
            if case .present(let crc) = state { crcs[index] = crc }
        }
        return crcs
    }

    /// A part was written to the staging file.
    public mutating func partArrived(_ path: String, generation: UInt64, index: Int, crc: UInt64) {
        update(path, generation) { entry in
            if index < entry.parts.count { entry.parts[index] = .present(crc: crc) }
        }
    }

    /// A part could not be fetched within its retry budget: readers waiting for it are told so.
    public mutating func partFailed(_ path: String, generation: UInt64, index: Int, reason: String) {
        failures += 1
        let count = failures
        update(path, generation) { entry in
            guard index < entry.parts.count, entry.parts[index] == .fetching else { return }
            entry.parts[index] = .missing
            entry.failedAt[index] = count
            entry.lastFailure = reason
        }
    }

    /// The copy verified: readers no longer wait.
    public mutating func verified(_ path: String, generation: UInt64) {
        update(path, generation) { $0.state = .verified }
        urgent.removeAll { $0.path == path }
    }

    /// The complete copy did not verify: its readers get EIO from now on.
    public mutating func corrupt(_ path: String, generation: UInt64, reason: String) {
        failures += 1
        update(path, generation) { $0.state = .corrupt(reason) }
        urgent.removeAll { $0.path == path }
    }

    private mutating func update(_ path: String, _ generation: UInt64, _ change: (inout Object) -> Void) {
        guard var entry = objects[path], entry.generation == generation else { return }
        change(&entry)
        objects[path] = entry
    }

    /// What the mount's health says of the download.
    public struct Progress: Sendable, Equatable {
        /// Bytes of the streamed objects on disk, out of their total.
        public var localBytes: UInt64 = 0
        public var totalBytes: UInt64 = 0
        public var waitingReads = 0
        /// Objects whose complete copy did not verify and are being fetched again.
        public var refetching: [String] = []
        /// Objects still arriving.
        public var streaming = 0
    }

    public var progress: Progress {
        var progress = Progress()
        progress.waitingReads = waitingReads
        for (_, entry) in objects {
            progress.totalBytes += entry.object.size
            switch entry.state {
            case .verified:
                progress.localBytes += entry.object.size
            case .corrupt:
                progress.refetching.append(entry.object.key)
            case .streaming:
                progress.streaming += 1
                for (index, state) in entry.parts.enumerated() where state != .missing && state != .fetching {
                    progress.localBytes += entry.plan.parts[index].length
                }
            }
        }
        progress.refetching.sort()
        return progress
    }
}
