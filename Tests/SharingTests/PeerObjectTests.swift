import AsyncHTTPClient
import Attestation
import CaidTestSupport
import Foundation
import Gateway
import ObjectStore
import Sharing
import Testing

/// Ranged reads of the verified cache between two sharing peers over mutually attested TLS, checked by the test
/// Attestation Service, and refusals of peers that do not prove a TEE, in both directions.
@Suite(.serialized) struct PeerObjectTests {
    final class Setup: @unchecked Sendable {
        let dir: TemporaryDirectory
        let trustee: TrusteePeer
        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        let server: PeerObjectServer
        let port: Int
        let content: [UInt8]

        init() async throws {
            dir = try TemporaryDirectory("caid-sharing")
            trustee = try await TrusteePeer(dialect: "current", resources: [:], directory: dir.path)
            let cache = dir.path + "/cache/model"
            try FileManager.default.createDirectory(atPath: cache + "/shards/深 x", withIntermediateDirectories: true)
            content = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            try Data(content).write(to: URL(fileURLWithPath: cache + "/shards/深 x/a.bin"))
            var manifest = Manifest()
            manifest.entries["shards/深 x/a.bin"] = .init(size: UInt64(content.count), etag: "\"E1\"", crc64: 1)
            try manifest.encoded().write(to: URL(fileURLWithPath: cache + ".manifest.json"))
            // Bytes that are in the cache directory but not in the manifest: never served.
            try Data("half-downloaded".utf8).write(to: URL(fileURLWithPath: cache + "/unverified.bin"))
            server = PeerObjectServer(peers: try Self.peers(trustee: trustee, http: http), cacheDirectory: cache, prefix: "", logger: quietLogger)
            port = try await server.start(host: "127.0.0.1", port: 0)
        }

        /// One host's side: its attested certificate and its verifier of others.
        func peers(policies: [String] = ["default"]) throws -> AttestedPeers {
            try Self.peers(trustee: trustee, http: http, policies: policies)
        }

        static func peers(trustee: TrusteePeer, http: HTTPClient, policies: [String] = ["default"]) throws -> AttestedPeers {
            let verifier = PeerVerifier(attestationService: trustee.url + "as/", policyIDs: policies, http: http)
            return try AttestedPeers(certificate: try AttestedCertificate.make(attester: SampleAttester()), verifier: verifier, logger: quietLogger)
        }

        var attestations: Int { trustee.requests().filter { $0["as"] != nil }.count }

        func finish() async {
            await server.stop()
            try? await http.shutdown()
            dir.remove()
        }
    }

    @Test func rangesOfVerifiedObjectsOnly() async throws {
        let setup = try await Setup()
        defer { Task { await setup.finish() } }
        let client = PeerObjectClient(peers: try setup.peers(), port: setup.port)
        let bytes = try await client.fetch(host: "127.0.0.1", key: "shards/深 x/a.bin", etag: "\"E1\"", range: 100...70_099)
        #expect(bytes == Array(setup.content[100...70_099]))
        // Both sides attested each other once (two verdicts); the second request reuses them.
        #expect(setup.attestations == 2)
        _ = try await client.fetch(host: "127.0.0.1", key: "shards/深 x/a.bin", etag: "\"E1\"", range: 0...9)
        #expect(setup.attestations == 2)

        let cases: [(String, String, ClosedRange<UInt64>, Int)] = [
            ("unverified.bin", "\"E1\"", 0...3, 404),
            ("shards/深 x/a.bin", "\"OTHER\"", 0...3, 412),
            ("shards/深 x/a.bin", "\"E1\"", 199_990...200_010, 416),
            ("../cache.manifest.json", "\"E1\"", 0...3, 404),
        ]
        for (key, etag, range, status) in cases {
            let error = await #expect(throws: PeerError.self) { try await client.fetch(host: "127.0.0.1", key: key, etag: etag, range: range) }
            #expect(error?.status == status, "\(key)")
        }
    }

    @Test func peerWhoseEvidenceTheServiceRefusesGetsNothing() async throws {
        let setup = try await Setup()
        defer { Task { await setup.finish() } }
        // This side asks the AS for a policy it does not have: it refuses the server, and gets no bytes.
        let strict = PeerObjectClient(peers: try setup.peers(policies: ["strict"]), port: setup.port)
        let error = await #expect(throws: PeerError.self) {
            try await strict.fetch(host: "127.0.0.1", key: "shards/深 x/a.bin", etag: "\"E1\"", range: 0...9)
        }
        #expect(error?.message.contains("did not prove a trusted TEE") == true)
    }

    @Test func clientWithoutEvidenceIsRefusedByTheServer() async throws {
        let setup = try await Setup()
        defer { Task { await setup.finish() } }
        let plain = try PlainCertificate.make(in: setup.dir.path)
        let script = """
            import socket, ssl, sys
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.load_cert_chain(sys.argv[2], sys.argv[3])
            try:
                with ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="peer") as tls:
                    tls.sendall(b"GET /v1/objects/shards/%E6%B7%B1%20x/a.bin HTTP/1.1\\r\\nHost: p\\r\\nRange: bytes=0-9\\r\\n\\r\\n")
                    data = tls.recv(4096)
                    print("SERVED" if data else "CLOSED")
            except (ssl.SSLError, OSError) as error:
                print("REFUSED", error)
            """
        let result = try Programs.run("/usr/bin/env", ["python3", "-c", script, String(setup.port), plain.certificate, plain.key])
        #expect(result.stdout.hasPrefix("REFUSED") || result.stdout.hasPrefix("CLOSED"), "\(result.stdout) \(result.stderr)")
        #expect(!result.stdout.contains("SERVED"))
    }

    @Test func serverWithoutEvidenceIsRefusedByTheClient() async throws {
        let setup = try await Setup()
        defer { Task { await setup.finish() } }
        let plain = try PlainCertificate.make(in: setup.dir.path)
        let port = Programs.unusedPort()
        let server = try Programs.start("/usr/bin/env", ["openssl", "s_server", "-quiet", "-accept", "127.0.0.1:\(port)", "-cert", plain.certificate,
            "-key", plain.key, "-tls1_3", "-Verify", "1"])
        defer { server.signal(SIGKILL); _ = server.wait() }
        try await Task.sleep(for: .milliseconds(500))
        let client = PeerObjectClient(peers: try setup.peers(), port: port)
        let error = await #expect(throws: PeerError.self) {
            try await client.fetch(host: "127.0.0.1", key: "shards/深 x/a.bin", etag: "\"E1\"", range: 0...9)
        }
        #expect(error?.message.contains("did not prove a trusted TEE") == true, "\(String(describing: error))")
    }
}
