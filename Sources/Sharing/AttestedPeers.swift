import AttestationService
import CaidBase
import Crypto
import Foundation
import Logging
import NIOCore
import NIOSSL
import RATLS
import Synchronization

/// Mutually attested TLS between the hosts of a sharing group: each side presents an attested certificate
/// (``AttestedCertificate``) and accepts the other's only when ``PeerVerifier`` does (the evidence binds the key,
/// the Attestation Service accepts it under `TRUSTEE_POLICY`, the token checks). The check runs inside the TLS
/// handshake (NIOSSL's custom verification), so nothing is served to, or taken from, an unverified peer.
///
/// A verdict is remembered per certificate (``VerdictCache``): an accepted one for ``verdictLifetime`` (at most to
/// the certificate's expiry), a refused one for ``refusalLifetime``, and presentations of a certificate whose check
/// is still running wait for that check. So a stream of TLS attempts with one unverifiable certificate costs the
/// Attestation Service one request, not one per attempt.
public final class AttestedPeers: Sendable {
    public static let verdictLifetime: TimeInterval = 600
    public static let refusalLifetime: TimeInterval = 30
    /// Distinct certificates remembered; beyond it the verdict that expires first is forgotten.
    public static let verdictCapacity = 1024

    private struct Contexts: Sendable {
        var server: NIOSSLContext
        var client: NIOSSLContext
    }

    private enum Decision { case known(VerdictCache.Verdict), wait(Task<VerdictCache.Verdict, Never>) }

    private struct Verdicts: Sendable {
        var cache = VerdictCache(capacity: AttestedPeers.verdictCapacity, acceptedLifetime: AttestedPeers.verdictLifetime, refusedLifetime: AttestedPeers.refusalLifetime)
        /// Checks under way, by certificate digest.
        var running: [Data: Task<VerdictCache.Verdict, Never>] = [:]
    }

    private let verifier: PeerVerifier
    private let logger: Logger
    private let contexts: Mutex<Contexts>
    private let verdicts = Mutex(Verdicts())

    public init(certificate: AttestedCertificate, verifier: PeerVerifier, logger: Logger) throws {
        self.verifier = verifier
        self.logger = logger
        contexts = Mutex(try Self.contexts(certificate))
    }

    /// Presents `certificate` from now on (fresh evidence).
    public func renew(_ certificate: AttestedCertificate) throws {
        let fresh = try Self.contexts(certificate)
        contexts.withLock { $0 = fresh }
    }

    var serverContext: NIOSSLContext { contexts.withLock { $0.server } }
    var clientContext: NIOSSLContext { contexts.withLock { $0.client } }

    private static func contexts(_ certificate: AttestedCertificate) throws -> Contexts {
        var key = Array(certificate.key.derRepresentation)
        defer { wipeBytes(&key) }
        let chain: [NIOSSLCertificateSource] = [.certificate(try NIOSSLCertificate(bytes: certificate.der, format: .der))]
        let privateKey = NIOSSLPrivateKeySource.privateKey(try NIOSSLPrivateKey(bytes: key, format: .der))
        // Peer certificates are self-signed by design: the custom verification replaces chain building.
        var server = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: privateKey)
        server.certificateVerification = .noHostnameVerification
        server.minimumTLSVersion = .tlsv13
        server.maximumTLSVersion = .tlsv13
        var client = TLSConfiguration.makeClientConfiguration()
        client.certificateChain = chain
        client.privateKey = privateKey
        client.certificateVerification = .noHostnameVerification
        client.minimumTLSVersion = .tlsv13
        client.maximumTLSVersion = .tlsv13
        return Contexts(server: try NIOSSLContext(configuration: server), client: try NIOSSLContext(configuration: client))
    }

    /// The verification NIOSSL runs on the peer's certificate during the handshake.
    func verification(peer: String) -> NIOSSLCustomVerificationCallback {
        { [self] certificates, promise in
            guard let leaf = certificates.first, let der = try? leaf.toDERBytes() else {
                logger.warning("sharing peer \(peer) presented no certificate")
                promise.succeed(.failed)
                return
            }
            let digest = Data(SHA256.hash(data: der))
            let now = Date()
            // One lock for the lookup and the start of a check, so two presentations never start two checks.
            let decision = verdicts.withLock { state -> Decision in
                if let known = state.cache.lookup(digest, now: now) { return .known(known) }
                if let running = state.running[digest] { return .wait(running) }
                let task = Task { [self] in await self.check(der, digest: digest, peer: peer) }
                state.running[digest] = task
                return .wait(task)
            }
            let check: Task<VerdictCache.Verdict, Never>
            switch decision {
            case .known(.accepted):
                promise.succeed(.certificateVerified)
                return
            case .known(.refused(let reason)):
                logger.debug("refusing sharing peer \(peer) again (verdict remembered): \(reason)")
                promise.succeed(.failed)
                return
            case .wait(let running):
                check = running
            }
            promise.completeWithTask {
                await check.value == .accepted ? .certificateVerified : .failed
            }
        }
    }

    /// One check with the verifier (and so at most one Attestation Service request) per certificate at a time.
    private func check(_ der: [UInt8], digest: Data, peer: String) async -> VerdictCache.Verdict {
        let verdict: VerdictCache.Verdict
        var notAfter: Date?
        do {
            let accepted = try await verifier.verify(certificate: der)
            notAfter = accepted.notAfter
            verdict = .accepted
            logger.info("sharing peer \(peer) attested", metadata: ["tee": "\(accepted.tee)"])
        } catch {
            verdict = .refused(error.message)
            logger.warning("refusing sharing peer \(peer): \(error)")
        }
        verdicts.withLock { state in
            state.cache.record(digest, verdict, now: Date(), notAfter: notAfter)
            state.running[digest] = nil
        }
        return verdict
    }
}
