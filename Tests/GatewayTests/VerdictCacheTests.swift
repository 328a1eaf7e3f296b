import Foundation
import RATLS
import Testing

/// The verdict cache, without I/O: lifetimes, the certificate's own expiry, and the bound.
@Suite struct VerdictCacheTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)
    func digest(_ n: Int) -> Data { Data([UInt8(n & 0xFF), UInt8(n >> 8)]) }

    @Test func refusalsAreRememberedBriefly() {
        var cache = VerdictCache(capacity: 8, acceptedLifetime: 600, refusedLifetime: 30)
        cache.record(digest(1), .refused("AS said no"), now: now)
        #expect(cache.lookup(digest(1), now: now.addingTimeInterval(29)) == .refused("AS said no"))
        #expect(cache.lookup(digest(1), now: now.addingTimeInterval(31)) == nil)
    }

    @Test func acceptanceEndsAtTheCertificatesExpiry() {
        var cache = VerdictCache(capacity: 8, acceptedLifetime: 600, refusedLifetime: 30)
        cache.record(digest(1), .accepted, now: now, notAfter: now.addingTimeInterval(100))
        cache.record(digest(2), .accepted, now: now)
        #expect(cache.lookup(digest(1), now: now.addingTimeInterval(99)) == .accepted)
        #expect(cache.lookup(digest(1), now: now.addingTimeInterval(101)) == nil)
        #expect(cache.lookup(digest(2), now: now.addingTimeInterval(599)) == .accepted)
    }

    @Test func boundedWithTheSoonestExpiringEvicted() {
        var cache = VerdictCache(capacity: 3, acceptedLifetime: 600, refusedLifetime: 30)
        cache.record(digest(1), .accepted, now: now)
        cache.record(digest(2), .refused("x"), now: now)
        cache.record(digest(3), .accepted, now: now)
        cache.record(digest(4), .accepted, now: now)
        #expect(cache.count == 3)
        #expect(cache.lookup(digest(2), now: now) == nil)  // the refusal expired first, so it went
        #expect(cache.lookup(digest(1), now: now) == .accepted)
        // A flood of distinct certificates never grows it past the bound.
        for n in 10..<2_000 { cache.record(digest(n), .refused("x"), now: now.addingTimeInterval(Double(n) / 1000)) }
        #expect(cache.count == 3)
    }
}
