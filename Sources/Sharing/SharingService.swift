import Attestation
import CaidBase
import CaidCore
import Foundation
import Logging
import RATLS
import ServiceLifecycle

/// The `sharing` service of `caid run`: serves this host's verified ciphertext to its peers over mutually attested
/// TLS, renews its certificate with fresh evidence, and reports in its health detail how each peer stands as a
/// source for this host's downloads.
public struct SharingService: Service {
    private let peers: AttestedPeers
    private let first: AttestedCertificate
    private let server: PeerObjectServer
    private let source: PeerRangeSource
    private let port: Int
    private let attester: any Attester
    private let gpu: GPUAttester?
    private let certificateRefresh: Duration
    private let handle: ServiceHandle

    /// - Parameters:
    ///   - first: the certificate `peers` presents now, renewed from here on every `certificateRefresh`
    ///     (`CAID_GATEWAY_CERT_REFRESH`) with fresh evidence from `attester` and `gpu`, as the gateway's is.
    public init(
        peers: AttestedPeers, first: AttestedCertificate, server: PeerObjectServer, source: PeerRangeSource, port: Int,
        attester: any Attester, gpu: GPUAttester?, certificateRefresh: Duration, handle: ServiceHandle
    ) {
        self.peers = peers
        self.first = first
        self.server = server
        self.source = source
        self.port = port
        self.attester = attester
        self.gpu = gpu
        self.certificateRefresh = certificateRefresh
        self.handle = handle
    }

    public func run() async throws {
        let bound: Int
        do {
            bound = try await server.start(host: "0.0.0.0", port: port)
        } catch {
            throw ServiceFailure("cannot listen for sharing peers on port \(port): \(error)")
        }
        let (peers, attester, gpu) = (self.peers, self.attester, self.gpu)
        let renewer = CertificateRenewer(purpose: "sharing", refresh: certificateRefresh, logger: handle.logger) {
            // Fresh TDX and GPU evidence blocks for a while: off the cooperative pool.
            try await Blocking.run { try AttestedCertificate.make(attester: attester, gpu: gpu) }
        } install: { fresh in
            try peers.renew(fresh)
        }
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await renewer.run(first: first) }
                group.addTask { await reportPeers(port: bound) }
                await group.waitForAll()
            }
        }
        await server.stop()
    }

    /// Shows in health how each peer stands, whenever that changes, until cancelled.
    private func reportPeers(port: Int) async {
        var last = ""
        while !Task.isCancelled {
            let line = "serving verified objects on port \(port); peers: \(source.summary)"
            if line != last {
                await handle.running(line)
                last = line
            }
            try? await Task.sleep(for: .milliseconds(500))
        }
    }
}
