import Attestation
import CaidCore
import Foundation
import Gateway
import Logging
import ServiceLifecycle

/// The `sharing` service of `caid run`: serves this host's verified ciphertext to its peers over mutually attested
/// TLS, renews its certificate with fresh evidence, and reports in its health detail how each peer stands as a
/// source for this host's downloads.
public struct SharingService: Service {
    private let peers: AttestedPeers
    private let server: PeerObjectServer
    private let source: PeerRangeSource
    private let port: Int
    private let attester: any Attester
    private let handle: ServiceHandle

    public init(peers: AttestedPeers, server: PeerObjectServer, source: PeerRangeSource, port: Int, attester: any Attester, handle: ServiceHandle) {
        self.peers = peers
        self.server = server
        self.source = source
        self.port = port
        self.attester = attester
        self.handle = handle
    }

    public func run() async throws {
        let bound: Int
        do {
            bound = try await server.start(host: "0.0.0.0", port: port)
        } catch {
            throw ServiceFailure("cannot listen for sharing peers on port \(port): \(error)")
        }
        await cancelWhenGracefulShutdown {
            var last = ""
            var renewed = ContinuousClock.now
            while !Task.isCancelled {
                let line = "serving verified objects on port \(bound); peers: \(source.summary)"
                if line != last {
                    await handle.running(line)
                    last = line
                }
                try? await Task.sleep(for: .milliseconds(500))
                if ContinuousClock.now - renewed > .seconds(600) {
                    renewed = ContinuousClock.now
                    do { try peers.renew(try AttestedCertificate.make(attester: attester)) } catch {
                        handle.logger.warning("cannot renew the sharing certificate, keeping the current one: \(error)")
                    }
                }
            }
        }
        await server.stop()
    }
}
