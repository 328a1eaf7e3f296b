import CaidCore
import Crypto
import Foundation
import Gateway
import Logging
import NIOCore
import NIOSSL
import Synchronization

/// Mutually attested TLS between the hosts of a sharing group: each side presents an attested certificate
/// (``AttestedCertificate``) and accepts the other's only when ``PeerVerifier`` does (the evidence binds the key,
/// the Attestation Service accepts it under `TRUSTEE_POLICY`, the token checks). The check runs inside the TLS
/// handshake (NIOSSL's custom verification), so nothing is served to, or taken from, an unverified peer.
///
/// A verdict is remembered per certificate for ``verdictLifetime``: a peer is attested once per certificate, not
/// once per connection.
public final class AttestedPeers: Sendable {
    public static let verdictLifetime: TimeInterval = 600

    private struct Contexts: Sendable {
        var server: NIOSSLContext
        var client: NIOSSLContext
    }

    private let verifier: PeerVerifier
    private let logger: Logger
    private let contexts: Mutex<Contexts>
    /// SHA-256 of a peer certificate → when its verdict expires.
    private let verdicts = Mutex<[Data: Date]>([:])

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
            if let until = verdicts.withLock({ $0[digest] }), until > Date() {
                promise.succeed(.certificateVerified)
                return
            }
            promise.completeWithTask { [self] in
                do {
                    let verdict = try await verifier.verify(certificate: der)
                    verdicts.withLock { $0[digest] = Date().addingTimeInterval(Self.verdictLifetime) }
                    logger.info("sharing peer \(peer) attested", metadata: ["tee": "\(verdict.tee)"])
                    return .certificateVerified
                } catch {
                    logger.warning("refusing sharing peer \(peer): \(error)")
                    return .failed
                }
            }
        }
    }
}
