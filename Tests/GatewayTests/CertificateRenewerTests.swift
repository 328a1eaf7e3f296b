import Attestation
import Foundation
import Logging
import RATLS
import Synchronization
import Testing

/// The one renewal loop of the gateway and the sharing server, driven by events: each test waits for the
/// certificates the loop installs, not for time to pass.
@Suite struct CertificateRenewerTests {
    /// What a renewer did, in order.
    enum Event: Equatable { case made, installed([UInt8]), failed }

    private func renewer(refresh: Duration, failFirst: Int, events: AsyncStream<Event>.Continuation) -> CertificateRenewer {
        let attempts = Mutex(0)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return CertificateRenewer(purpose: "test", refresh: refresh, logger: logger) {
            let attempt = attempts.withLock { count -> Int in
                count += 1
                return count
            }
            if attempt <= failFirst {
                events.yield(.failed)
                throw CancellationError()
            }
            events.yield(.made)
            return try AttestedCertificate.make(attester: SampleAttester())
        } install: { fresh in
            events.yield(.installed(fresh.der))
        }
    }

    @Test func aFreshCertificateIsInstalledEveryRefresh() async throws {
        let (events, continuation) = AsyncStream.makeStream(of: Event.self)
        let first = try AttestedCertificate.make(attester: SampleAttester())
        let task = Task { await renewer(refresh: .milliseconds(20), failFirst: 0, events: continuation).run(first: first) }
        defer { task.cancel() }
        var installed: [[UInt8]] = []
        for await event in events {
            if case .installed(let der) = event { installed.append(der) }
            if installed.count == 3 { break }
        }
        #expect(Set(installed + [first.der]).count == 4, "each renewal presents a new certificate")
    }

    @Test func aFailedRenewalKeepsTheCurrentOneAndTriesAgain() async throws {
        let (events, continuation) = AsyncStream.makeStream(of: Event.self)
        let first = try AttestedCertificate.make(attester: SampleAttester())
        let task = Task { await renewer(refresh: .milliseconds(20), failFirst: 2, events: continuation).run(first: first) }
        defer { task.cancel() }
        var seen: [Event] = []
        for await event in events {
            seen.append(event)
            if case .installed = event { break }
        }
        #expect(seen.prefix(3) == [.failed, .failed, .made], "two failures install nothing, the third attempt does")
    }

    @Test func cancellingEndsTheLoop() async throws {
        let (_, continuation) = AsyncStream.makeStream(of: Event.self)
        let first = try AttestedCertificate.make(attester: SampleAttester())
        let task = Task { await renewer(refresh: .seconds(3600), failFirst: 0, events: continuation).run(first: first) }
        task.cancel()
        await task.value
    }
}
