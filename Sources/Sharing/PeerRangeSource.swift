import Foundation
import Logging
import ObjectStore
import Synchronization

/// The fetcher's view of the sharing group: asks the peers for each range in turn (spread by object and offset),
/// falls back to OSS on any refusal, error or timeout, and avoids for a while a peer that failed (1 minute) or whose
/// bytes did not verify (10 minutes). ``summary`` says how each peer stands, for `caid health`.
public final class PeerRangeSource: AlternateSource {
    public static let failurePause: TimeInterval = 60
    public static let distrustPause: TimeInterval = 600

    private struct PeerState: Sendable {
        var avoidUntil: Date?
        var reason: String?
        var served: UInt64 = 0
    }

    private let hosts: [String]
    private let client: PeerObjectClient
    private let logger: Logger
    private let states: Mutex<[String: PeerState]>

    public init(hosts: [String], client: PeerObjectClient, logger: Logger) {
        self.hosts = hosts
        self.client = client
        self.logger = logger
        states = Mutex(Dictionary(uniqueKeysWithValues: hosts.map { ($0, PeerState()) }))
    }

    public func fetch(key: String, etag: String, range: ClosedRange<UInt64>) async -> (bytes: [UInt8], from: String)? {
        let now = Date()
        let usable = states.withLock { states in hosts.filter { (states[$0]?.avoidUntil ?? .distantPast) <= now } }
        guard !usable.isEmpty else { return nil }
        // Start with a different peer for different ranges, then try the others.
        let start = abs((key.hashValue &+ Int(truncatingIfNeeded: range.lowerBound >> 20)) % usable.count)
        for index in 0..<usable.count {
            let host = usable[(start + index) % usable.count]
            do {
                let bytes = try await client.fetch(host: host, key: key, etag: etag, range: range)
                states.withLock { $0[host]?.served += UInt64(bytes.count) }
                return (bytes, host)
            } catch where error.status == 404 || error.status == 412 {
                continue  // the peer does not have it (yet): not its fault
            } catch {
                logger.info("\(error); using another source for \(key)")
                avoid(host, for: Self.failurePause, reason: error.message)
            }
        }
        return nil
    }

    public func distrust(_ from: String, key: String) {
        avoid(from, for: Self.distrustPause, reason: "served bytes of \(key) that did not verify against OSS's CRC-64")
    }

    private func avoid(_ host: String, for seconds: TimeInterval, reason: String) {
        states.withLock { $0[host]?.avoidUntil = Date().addingTimeInterval(seconds); $0[host]?.reason = reason }
    }

    /// One line per peer: what it served, or why it is avoided and until when.
    public var summary: String {
        let now = Date()
        return states.withLock { states in
            hosts.map { host in
                let state = states[host] ?? PeerState()
                if let until = state.avoidUntil, until > now {
                    return "\(host) avoided for \(Int(until.timeIntervalSince(now)))s: \(state.reason ?? "")"
                }
                return "\(host) ok, \(state.served >> 10) KiB received"
            }.joined(separator: "; ")
        }
    }
}
