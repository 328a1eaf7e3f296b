import Attestation
import CaidTestSupport
import Foundation
import RATLS
import Testing

/// `caid tunnel` (the built executable) against caid's gateway and the test Attestation Service, with curl as the
/// proxy user, as a CAI client would use it.
@Suite(.serialized) struct TunnelTests {
    final class Tunnel: @unchecked Sendable {
        let process: Programs.Running
        let port: Int

        /// - Parameter allowSample: the test gateways carry sample evidence, which caid tunnel refuses by default.
        init(asAddress: String, policies: [String] = [], extra: [String] = [], allowSample: Bool = true) async throws {
            let port = Programs.unusedPort()
            process = try Programs.start(Programs.caid, ["tunnel", "--listen", "127.0.0.1:\(port)", "--as-addr", asAddress] + policies.flatMap { ["--policy", $0] } + (allowSample ? ["--allow-sample"] : []) + extra)
            self.port = port
            do {
                try await process.waitForOutput("proxy listening")
            } catch {
                throw PeerProcess.Failure(description: "caid tunnel did not start: \(error)")
            }
        }

        func curl(_ url: String, connect: Bool = false) throws -> Programs.Result {
            try Programs.run("/usr/bin/env", ["curl", "-sS", "--max-time", "20", "-x", "http://127.0.0.1:\(port)"] + (connect ? ["-p"] : []) + ["-D", "-", url])
        }

        deinit {
            process.signal(SIGTERM)
            _ = process.wait()
        }
    }

    @Test func curlThroughTheTunnelBothWays() async throws {
        let setup = try await GatewayInteropTests.Setup()
        defer { Task { await setup.finish() } }
        let tunnel = try await Tunnel(asAddress: setup.asAddress, policies: ["default", "model-serving"])
        let url = "http://127.0.0.1:\(setup.port)/index.html"
        let forwarded = try tunnel.curl(url)
        #expect(forwarded.status == 0, "\(forwarded.stderr)")
        #expect(forwarded.stdout.contains("200"))
        let forwardedPage = forwarded.stdout.hasSuffix(setup.page)
        #expect(forwardedPage)
        let connected = try tunnel.curl(url, connect: true)
        #expect(connected.status == 0, "\(connected.stderr)")
        #expect(connected.stdout.contains("200 Connection Established"))
        let connectedPage = connected.stdout.hasSuffix(setup.page)
        #expect(connectedPage)
        // Several requests share one verified connection: one attestation for all of them.
        for _ in 0..<3 { _ = try tunnel.curl(url) }
        let attestations = setup.trustee.requests().filter { $0["as"] != nil }.count
        #expect(attestations == 1)
    }

    @Test func missingPolicyIsRefusedWithTheReason() async throws {
        let setup = try await GatewayInteropTests.Setup()
        defer { Task { await setup.finish() } }
        // The AS knows no policy "strict": it refuses, and the proxy user is told why.
        let tunnel = try await Tunnel(asAddress: setup.asAddress, policies: ["strict"])
        let result = try tunnel.curl("http://127.0.0.1:\(setup.port)/index.html")
        #expect(result.stdout.contains("403"))
        #expect(result.stdout.contains("did not prove a trusted TEE"))
        #expect(result.stdout.contains("strict"))
        let leaked = result.stdout.contains(setup.page)
        #expect(!leaked)
    }

    @Test func expiredTokenIsRefused() async throws {
        let dir = try TemporaryDirectory("caid-tunnel")
        defer { dir.remove() }
        let setup = try await GatewayInteropTests.Setup()
        defer { Task { await setup.finish() } }
        let expiring = try await TrusteePeer(dialect: "current", resources: [:], directory: dir.path, options: ["--as-token-seconds", "-60"])
        let tunnel = try await Tunnel(asAddress: expiring.url + "as/")
        let result = try tunnel.curl("http://127.0.0.1:\(setup.port)/index.html")
        #expect(result.stdout.contains("403"))
        #expect(result.stdout.contains("expired"))
    }

    /// A gateway certificate past its notAfter (here one made 7 hours ago, valid for 6) is refused with the reason,
    /// before the Attestation Service is asked.
    @Test func expiredGatewayCertificateIsRefused() async throws {
        let old = try AttestedCertificate.make(attester: SampleAttester(), now: Date().addingTimeInterval(-7 * 3600))
        let setup = try await GatewayInteropTests.Setup(certificate: old)
        defer { setup.stopPeers(); Task { await setup.finish() } }
        let tunnel = try await Tunnel(asAddress: setup.asAddress)
        let result = try tunnel.curl("http://127.0.0.1:\(setup.port)/index.html")
        #expect(result.stdout.contains("403"))
        #expect(result.stdout.contains("certificate expired at"), "\(result.stdout)")
        #expect(!result.stdout.contains(setup.page))
        let asked = setup.trustee.requests().filter { ($0["path"] as? String)?.hasSuffix("/as/attestation") == true }.count
        #expect(asked == 0)

        // A certificate that starts a little in the future (clock skew within 5 minutes) is fine.
        let early = try AttestedCertificate.make(attester: SampleAttester(), now: Date().addingTimeInterval(120))
        let skewed = try await GatewayInteropTests.Setup(certificate: early)
        defer { skewed.stopPeers(); Task { await skewed.finish() } }
        let fine = try tunnel.curl("http://127.0.0.1:\(skewed.port)/index.html")
        #expect(fine.stdout.contains(skewed.page), "\(fine.stdout.prefix(300))")
    }

    /// Sample evidence proves no TEE: without --allow-sample the tunnel refuses it, with the reason, and does not
    /// ask the Attestation Service (which may well accept it).
    @Test func sampleEvidenceIsRefusedUnlessAllowed() async throws {
        let setup = try await GatewayInteropTests.Setup()
        defer { setup.stopPeers(); Task { await setup.finish() } }
        let strict = try await Tunnel(asAddress: setup.asAddress, allowSample: false)
        let refused = try strict.curl("http://127.0.0.1:\(setup.port)/index.html")
        #expect(refused.stdout.contains("403"))
        #expect(refused.stdout.contains("sample evidence"), "\(refused.stdout)")
        #expect(!refused.stdout.contains(setup.page))
        let asked = setup.trustee.requests().filter { ($0["path"] as? String)?.hasSuffix("/as/attestation") == true }.count
        #expect(asked == 0)
    }

    /// A TLS 1.3 server offering h2 with the given certificate (OpenSSL through Python's ssl), started once it
    /// listens: it says so (`openssl s_server -quiet` says nothing, and without -quiet it ends at stdin's EOF).
    static func tlsServer(port: Int, certificate: String, key: String) async throws -> Programs.Running {
        let server = try Programs.start("/usr/bin/env", ["python3", "-c", """
            import socket, ssl, sys, threading
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            context.set_alpn_protocols(["h2"])
            context.load_cert_chain(sys.argv[2], sys.argv[3])
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", int(sys.argv[1])))
            listener.listen(16)
            print("listening", flush=True)
            def serve(connection):
                try:
                    with context.wrap_socket(connection, server_side=True) as tls:
                        while tls.recv(4096):
                            pass
                except (OSError, ssl.SSLError):
                    pass
            while True:
                threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()
            """, String(port), certificate, key])
        try await server.waitForOutput("listening")
        return server
    }

    @Test func evidenceThatDoesNotBindTheKeyIsRefused() async throws {
        let setup = try await GatewayInteropTests.Setup()
        defer { Task { await setup.finish() } }
        let cert = setup.dir.path + "/forged.pem"
        let key = setup.dir.path + "/forged.key"
        let forged = try Programs.run("/usr/bin/env", ["python3", Programs.packageRoot + "/Tests/peers/forge_cert.py", String(setup.port), cert, key])
        try #require(forged.status == 0, "\(forged.stderr)")
        let port = Programs.unusedPort()
        let server = try await Self.tlsServer(port: port, certificate: cert, key: key)
        defer { server.signal(SIGKILL); _ = server.wait() }
        let tunnel = try await Tunnel(asAddress: setup.asAddress)
        let result = try tunnel.curl("http://127.0.0.1:\(port)/index.html")
        #expect(result.stdout.contains("403"))
        #expect(result.stdout.contains("does not bind the certificate's key"))
    }

    @Test func plainTLSServerIsNotAGateway() async throws {
        let dir = try TemporaryDirectory("caid-tunnel")
        defer { dir.remove() }
        let plain = try PlainCertificate.make(in: dir.path)
        let port = Programs.unusedPort()
        let server = try await Self.tlsServer(port: port, certificate: plain.certificate, key: plain.key)
        defer { server.signal(SIGKILL); _ = server.wait() }
        let tunnel = try await Tunnel(asAddress: "http://127.0.0.1:1/as/")
        let result = try tunnel.curl("http://127.0.0.1:\(port)/")
        #expect(result.stdout.contains("403"))
        #expect(result.stdout.contains("carries no TEE evidence"))
    }
}
