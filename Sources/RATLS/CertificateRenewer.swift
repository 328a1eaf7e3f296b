import Foundation
import Logging

/// Renews an attested certificate on its schedule until cancelled: the one loop behind the gateway's certificate
/// and the sharing server's, so that both follow `CAID_GATEWAY_CERT_REFRESH` and carry the same evidence.
///
/// A certificate is made anew after the refresh interval, or before its passport token expires, whichever is
/// sooner (``renewalDelay(refresh:tokenExpiry:now:)``). A failed renewal keeps the current certificate and tries
/// again (``retryDelay(refresh:tokenExpiry:)``).
public struct CertificateRenewer: Sendable {
    /// What the certificate is for, in log lines ("gateway", "sharing").
    public var purpose: String
    /// `CAID_GATEWAY_CERT_REFRESH`.
    public var refresh: Duration
    /// Makes a fresh certificate (new evidence, and in the passport model a new token).
    public var make: @Sendable () async throws -> AttestedCertificate
    /// Starts presenting a fresh certificate.
    public var install: @Sendable (AttestedCertificate) async throws -> Void
    public var logger: Logger

    public init(
        purpose: String, refresh: Duration, logger: Logger,
        make: @escaping @Sendable () async throws -> AttestedCertificate,
        install: @escaping @Sendable (AttestedCertificate) async throws -> Void
    ) {
        self.purpose = purpose
        self.refresh = refresh
        self.logger = logger
        self.make = make
        self.install = install
    }

    /// Renews, starting from `first` (already presented), until the task is cancelled.
    public func run(first: AttestedCertificate) async {
        var current = first
        var delay = Self.renewalDelay(refresh: refresh, tokenExpiry: current.tokenExpiry, now: Date())
        while !Task.isCancelled {
            try? await Task.sleep(for: delay)
            if Task.isCancelled { break }
            do {
                let fresh = try await make()
                try await install(fresh)
                current = fresh
                delay = Self.renewalDelay(refresh: refresh, tokenExpiry: fresh.tokenExpiry, now: Date())
                logger.debug("\(purpose) certificate renewed")
            } catch {
                delay = Self.retryDelay(refresh: refresh, tokenExpiry: current.tokenExpiry)
                if let expiry = current.tokenExpiry, expiry <= Date() {
                    // Still fail closed: clients refuse the expired token; nothing is served unattested.
                    logger.error("the \(purpose) certificate's passport token expired at \(expiry) and cannot be renewed; its TNG passport clients and peers refuse it until the Attestation Service answers: \(error)")
                } else {
                    // The current certificate stays valid; keep serving it and say why renewal failed.
                    logger.warning("cannot renew the \(purpose) certificate, keeping the current one: \(error)")
                }
            }
        }
    }

    /// When to make the next certificate: after the refresh interval, or before the passport token expires,
    /// whichever is sooner. TNG renews when the token has expired (tng/src/tunnel/utils/maybe_cached.rs, commit
    /// ffb70b6 in v2.2.6), so its clients can meet an expired one; caid renews a fifth of the token's remaining
    /// life early, at most a minute.
    public static func renewalDelay(refresh: Duration, tokenExpiry: Date?, now: Date) -> Duration {
        guard let tokenExpiry else { return refresh }
        let left = tokenExpiry.timeIntervalSince(now)
        let early = min(60, max(0, left) / 5)
        let wait = Duration.milliseconds(Int64(max(1, left - early) * 1000))
        return min(refresh, wait)
    }

    /// After a failed renewal: a passport's token runs out, so try again soon; evidence in a six-hour certificate
    /// can wait for the next interval.
    public static func retryDelay(refresh: Duration, tokenExpiry: Date?) -> Duration {
        tokenExpiry == nil ? refresh : min(refresh, .seconds(15))
    }
}
