import Foundation

/// What was decided about peer certificates, by SHA-256 of their DER, so that a certificate costs the Attestation
/// Service one request however often it is presented: an accepted one until its verdict lifetime or the
/// certificate's own expiry, a refused one briefly (a stranger replaying the same unverifiable certificate would
/// otherwise make caid POST to the AS on every TLS attempt). Bounded: when full, the entry that expires first goes.
/// Pure; the caller holds it under a lock.
public struct VerdictCache: Sendable {
    public enum Verdict: Sendable, Equatable {
        case accepted
        case refused(String)
    }

    public let capacity: Int
    public let acceptedLifetime: TimeInterval
    public let refusedLifetime: TimeInterval
    private var entries: [Data: (verdict: Verdict, until: Date)] = [:]

    public init(capacity: Int = 1024, acceptedLifetime: TimeInterval = 600, refusedLifetime: TimeInterval = 30) {
        self.capacity = max(1, capacity)
        self.acceptedLifetime = acceptedLifetime
        self.refusedLifetime = refusedLifetime
    }

    /// The entries held, expired ones included until the next ``record(_:_:now:notAfter:)``.
    public var count: Int { entries.count }

    /// The verdict on `digest` if one is still current at `now`.
    public func lookup(_ digest: Data, now: Date) -> Verdict? {
        guard let entry = entries[digest], entry.until > now else { return nil }
        return entry.verdict
    }

    /// Remembers `verdict`; an accepted certificate is not remembered past its `notAfter`.
    public mutating func record(_ digest: Data, _ verdict: Verdict, now: Date, notAfter: Date? = nil) {
        var until = now.addingTimeInterval(verdict == .accepted ? acceptedLifetime : refusedLifetime)
        if verdict == .accepted, let notAfter { until = min(until, notAfter) }
        entries = entries.filter { $0.value.until > now }
        if entries[digest] == nil, entries.count >= capacity,
           let soonest = entries.min(by: { $0.value.until < $1.value.until })?.key {
            entries.removeValue(forKey: soonest)
        }
        entries[digest] = (verdict, until)
    }
}
