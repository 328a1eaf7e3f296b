import Metrics
import Synchronization

/// What strangers may hold of the gateway at once, as a pure ledger: connections in all, connections from one
/// source address, and tunnel streams (each one an upstream socket) across every connection. A refusal is counted
/// by reason so that `/metrics` and health can say what was turned away.
///
/// One process-wide stream budget, not only a per-connection limit: 256 connections × 200 streams would be 51,200
/// upstream sockets, and once the process meets EMFILE the health socket, KBS, OSS and FUSE opens all fail with it.
struct AdmissionLedger: Sendable, Equatable {
    /// Why a connection or stream was turned away.
    enum Refusal: String, Sendable, CaseIterable {
        /// `CAID_GATEWAY_MAX_CONNECTIONS` connections were open.
        case connections
        /// `CAID_GATEWAY_MAX_CONNECTIONS_PER_SOURCE` connections from that address were open.
        case source
        /// `CAID_GATEWAY_STREAM_BUDGET` streams were open across the gateway.
        case streams
    }

    let maxConnections: Int
    let maxPerSource: Int
    let maxStreams: Int
    private(set) var connections = 0
    private(set) var streams = 0
    /// Streams admitted since start.
    private(set) var streamsAdmitted = 0
    private(set) var perSource: [String: Int] = [:]
    private(set) var refused: [Refusal: Int] = [:]

    init(maxConnections: Int, maxPerSource: Int, maxStreams: Int) {
        self.maxConnections = maxConnections
        self.maxPerSource = maxPerSource
        self.maxStreams = maxStreams
    }

    /// A connection from `source` arrived. - Returns: nil when admitted (release it later), else why not.
    mutating func admitConnection(from source: String) -> Refusal? {
        if connections >= maxConnections { return refuse(.connections) }
        if perSource[source, default: 0] >= maxPerSource { return refuse(.source) }
        connections += 1
        perSource[source, default: 0] += 1
        return nil
    }

    mutating func releaseConnection(from source: String) {
        guard let held = perSource[source], held > 0 else { return }
        connections -= 1
        perSource[source] = held == 1 ? nil : held - 1
    }

    /// A stream opened. - Returns: nil when admitted (release it later), else why not.
    mutating func admitStream() -> Refusal? {
        if streams >= maxStreams { return refuse(.streams) }
        streams += 1
        streamsAdmitted += 1
        return nil
    }

    mutating func releaseStream() {
        if streams > 0 { streams -= 1 }
    }

    private mutating func refuse(_ reason: Refusal) -> Refusal {
        refused[reason, default: 0] += 1
        return reason
    }
}

/// The gateway's shared ``AdmissionLedger``, behind a lock, mirrored into swift-metrics (`/metrics` in `caid run`):
/// `caid_gateway_open{kind}` and `caid_gateway_refused_total{reason}`.
public final class GatewayBudget: Sendable {
    /// What the ledger holds now, for health and tests.
    public struct Snapshot: Sendable, Equatable {
        public var connections: Int
        public var streams: Int
        public var sources: Int
        /// Refusals since start, by reason (`connections`, `source`, `streams`).
        public var refused: [String: Int]
        /// Streams admitted since start.
        public var streamsAdmitted = 0

        /// "3 connections from 2 sources, 17 streams; refused 5 (source cap)", for the gateway's health detail.
        public var summary: String {
            var text = "\(connections) connections from \(sources) sources, \(streams) streams"
            let reasons = refused.filter { $0.value > 0 }.sorted { $0.key < $1.key }
            if !reasons.isEmpty {
                text += "; refused " + reasons.map { "\($0.value) (\(Self.words[$0.key] ?? $0.key))" }.joined(separator: ", ")
            }
            return text
        }

        private static let words = ["connections": "connection cap", "source": "per-source cap", "streams": "stream budget"]
    }

    /// The ledger and whoever watches it change, behind one lock, so that a watcher's newest snapshot is never
    /// older than the last change.
    private struct State {
        var ledger: AdmissionLedger
        var watchers: [UInt64: AsyncStream<Snapshot>.Continuation] = [:]
        var nextWatcher: UInt64 = 0

        var snapshot: Snapshot {
            Snapshot(
                connections: ledger.connections, streams: ledger.streams, sources: ledger.perSource.count,
                refused: Dictionary(uniqueKeysWithValues: ledger.refused.map { ($0.key.rawValue, $0.value) }),
                streamsAdmitted: ledger.streamsAdmitted)
        }

        mutating func changed() {
            guard !watchers.isEmpty else { return }
            let current = snapshot
            // A watcher whose reader has gone is dropped here, on the next change.
            for (id, watcher) in watchers {
                if case .terminated = watcher.yield(current) { watchers[id] = nil }
            }
        }
    }

    private let state: Mutex<State>
    private let openConnections = Gauge(label: "caid_gateway_open", dimensions: [("kind", "connections")])
    private let openStreams = Gauge(label: "caid_gateway_open", dimensions: [("kind", "streams")])
    private let refusals: [AdmissionLedger.Refusal: Counter] = Dictionary(uniqueKeysWithValues: AdmissionLedger.Refusal.allCases.map {
        ($0, Counter(label: "caid_gateway_refused_total", dimensions: [("reason", $0.rawValue)]))
    })

    init(maxConnections: Int, maxPerSource: Int, maxStreams: Int) {
        state = Mutex(State(ledger: AdmissionLedger(maxConnections: maxConnections, maxPerSource: maxPerSource, maxStreams: maxStreams)))
    }

    func admitConnection(from source: String) -> AdmissionLedger.Refusal? {
        let (refusal, open) = change { ($0.admitConnection(from: source), $0.connections) }
        record(refusal, open: open, in: openConnections)
        return refusal
    }

    func releaseConnection(from source: String) {
        openConnections.record(change { ledger in
            ledger.releaseConnection(from: source)
            return ledger.connections
        })
    }

    func admitStream() -> AdmissionLedger.Refusal? {
        let (refusal, open) = change { ($0.admitStream(), $0.streams) }
        record(refusal, open: open, in: openStreams)
        return refusal
    }

    func releaseStream() {
        openStreams.record(change { ledger in
            ledger.releaseStream()
            return ledger.streams
        })
    }

    public var snapshot: Snapshot { state.withLock { $0.snapshot } }

    /// The snapshot now, then the newest one after every change, until the reader stops: for whoever waits for a
    /// count (tests wait on it instead of polling).
    public func changes() -> AsyncStream<Snapshot> {
        let (stream, continuation) = AsyncStream.makeStream(of: Snapshot.self, bufferingPolicy: .bufferingNewest(1))
        state.withLock { state in
            state.watchers[state.nextWatcher] = continuation
            state.nextWatcher += 1
            continuation.yield(state.snapshot)
        }
        return stream
    }

    private func change<T>(_ body: (inout AdmissionLedger) -> T) -> T {
        state.withLock { state in
            let result = body(&state.ledger)
            state.changed()
            return result
        }
    }

    private func record(_ refusal: AdmissionLedger.Refusal?, open: Int, in gauge: Gauge) {
        if let refusal { refusals[refusal]?.increment() } else { gauge.record(open) }
    }
}
