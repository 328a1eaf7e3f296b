import AsyncHTTPClient
import Attestation
import AttestationService
import CaidTestSupport
import Foundation
import Logging
import NIOCore
import ObjectStore
import OSSProtocol
import RATLS
@testable import Sharing
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

        init(limits: PeerObjectServer.Limits = PeerObjectServer.Limits()) async throws {
            dir = try TemporaryDirectory("caid-sharing")
            // The AS API of Trustee >= 1.6, so that one verification is one request (the older API takes two here:
            // the current form, refused, then the flat one).
            trustee = try await TrusteePeer(dialect: "current", resources: [:], directory: dir.path, options: ["--as-api", "current"])
            let cache = dir.path + "/cache/model"
            try FileManager.default.createDirectory(atPath: cache + "/shards/深 x", withIntermediateDirectories: true)
            content = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            try Data(content).write(to: URL(fileURLWithPath: cache + "/shards/深 x/a.bin"))
            var manifest = Manifest()
            manifest.entries["shards/深 x/a.bin"] = .init(size: UInt64(content.count), etag: "\"E1\"", crc64: 1)
            try manifest.encoded().write(to: URL(fileURLWithPath: cache + ".manifest.json"))
            // Bytes that are in the cache directory but not in the manifest: never served.
            try Data("half-downloaded".utf8).write(to: URL(fileURLWithPath: cache + "/unverified.bin"))
            server = PeerObjectServer(peers: try Self.peers(trustee: trustee, http: http), cacheDirectory: cache, prefix: "", limits: limits, logger: quietLogger)
            port = try await server.start(host: "127.0.0.1", port: 0)
        }

        /// One host's side: its attested certificate and its verifier of others.
        func peers(policies: [String] = ["default"]) throws -> AttestedPeers {
            try Self.peers(trustee: trustee, http: http, policies: policies)
        }

        static func peers(
            trustee: TrusteePeer, http: HTTPClient, policies: [String] = ["default"], attester: any Attester = SampleAttester(),
            now: Date = Date(), allowSample: Bool = true
        ) throws -> AttestedPeers {
            // The test hosts attest with sample evidence, as a development group would (CAID_ATTESTER=sample).
            let verifier = PeerVerifier(attestationService: trustee.url + "as/", policyIDs: policies, allowSample: allowSample, http: http)
            return try AttestedPeers(certificate: try AttestedCertificate.make(attester: attester, now: now), verifier: verifier, logger: quietLogger)
        }

        /// Accepted attestations.
        var attestations: Int { trustee.requests().filter { $0["as"] != nil }.count }
        /// Every request to the Attestation Service, refused ones included.
        var asRequests: Int { trustee.requests().filter { ($0["path"] as? String)?.hasSuffix("/as/attestation") == true }.count }

        /// Stops the test AS now: `finish()` runs in a task that may not get to run before the test process exits,
        /// and a leaked AS keeps the build lock's descriptor (inherited through `flock`) open.
        func stopTrustee() {
            trustee.peer.process.signal(SIGKILL)
            _ = trustee.peer.process.wait()
        }

        func finish() async {
            await server.stop()
            try? await http.shutdown()
            dir.remove()
        }
    }

    @Test func rangesOfVerifiedObjectsOnly() async throws {
        let setup = try await Setup()
        defer { setup.stopTrustee(); Task { await setup.finish() } }
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
        defer { setup.stopTrustee(); Task { await setup.finish() } }
        // This side asks the AS for a policy it does not have: it refuses the server, and gets no bytes.
        let strict = PeerObjectClient(peers: try setup.peers(policies: ["strict"]), port: setup.port)
        let error = await #expect(throws: PeerError.self) {
            try await strict.fetch(host: "127.0.0.1", key: "shards/深 x/a.bin", etag: "\"E1\"", range: 0...9)
        }
        #expect(error?.message.contains("did not prove a trusted TEE") == true)
    }

    @Test func clientWithoutEvidenceIsRefusedByTheServer() async throws {
        let setup = try await Setup()
        defer { setup.stopTrustee(); Task { await setup.finish() } }
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

    /// A "peer" whose kernel accepts the TCP connection and that never answers the ClientHello: the fetch ends at its
    /// timeout (once it waited for the handshake without a bound).
    @Test func aPeerThatNeverAnswersTheHandshakeIsCutAtTheTimeout() async throws {
        let setup = try await Setup()
        defer { setup.stopTrustee(); Task { await setup.finish() } }
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(listener >= 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) == 0 && getsockname(listener, $0, &length) == 0 }
        }
        try #require(bound && listen(listener, 8) == 0)
        let client = PeerObjectClient(peers: try setup.peers(), port: Int(UInt16(bigEndian: address.sin_port)))
        let start = ContinuousClock.now
        let error = await #expect(throws: PeerError.self) {
            try await client.fetch(host: "127.0.0.1", key: "shards/深 x/a.bin", etag: "\"E1\"", range: 0...9, timeout: .seconds(1))
        }
        #expect(ContinuousClock.now - start < .seconds(10), "\(String(describing: error))")
    }

    @Test func serverWithoutEvidenceIsRefusedByTheClient() async throws {
        let setup = try await Setup()
        defer { setup.stopTrustee(); Task { await setup.finish() } }
        let plain = try PlainCertificate.make(in: setup.dir.path)
        let port = Programs.unusedPort()
        let server = try Programs.start("/usr/bin/env", ["openssl", "s_server", "-accept", "127.0.0.1:\(port)", "-cert", plain.certificate,
            "-key", plain.key, "-tls1_3", "-Verify", "1"])
        defer { server.signal(SIGKILL); _ = server.wait() }
        // s_server says ACCEPT once it listens.
        try await FileEvents.line(of: server, what: "openssl s_server listening") { $0 == "ACCEPT" ? () : nil }
        let client = PeerObjectClient(peers: try setup.peers(), port: port)
        let error = await #expect(throws: PeerError.self) {
            try await client.fetch(host: "127.0.0.1", key: "shards/深 x/a.bin", etag: "\"E1\"", range: 0...9)
        }
        #expect(error?.message.contains("did not prove a trusted TEE") == true, "\(String(describing: error))")
    }

    /// TDX "evidence" the Attestation Service refuses (a quote far too short): a certificate that passes every local
    /// check and is refused only by the AS, as a stranger's forged evidence would be.
    struct UnverifiableTDX: Attester {
        var tee: TEEType { .tdx }
        func evidence(reportData: [UInt8], gpuEvidence: JSONValue?) -> JSONValue {
            ["quote": .string(Base64.standard(Array(repeating: 7, count: 32)))]
        }
    }

    @Test func unverifiableCertificatesCostOneAttestationEach() async throws {
        let setup = try await Setup()
        defer { setup.stopTrustee(); Task { await setup.finish() } }
        let strangers = try (0..<2).map { _ in
            PeerObjectClient(peers: try Setup.peers(trustee: setup.trustee, http: setup.http, attester: UnverifiableTDX()), port: setup.port)
        }
        let start = ContinuousClock.now
        var refused = 0
        for stranger in strangers {
            // Ten at once, then ten after another: each TLS attempt presents the same certificate.
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for _ in 0..<10 {
                    group.addTask {
                        do { _ = try await stranger.fetch(host: "127.0.0.1", key: "shards/深 x/a.bin", etag: "\"E1\"", range: 0...9); return false } catch { return true }
                    }
                }
                for try await failed in group where failed { refused += 1 }
            }
            for _ in 0..<10 {
                do { _ = try await stranger.fetch(host: "127.0.0.1", key: "shards/深 x/a.bin", etag: "\"E1\"", range: 0...9) } catch { refused += 1 }
            }
        }
        #expect(refused == 40)
        // The AS saw: each stranger checking the server once (accepted, then remembered), and the server checking
        // each stranger's certificate once (refused, then remembered): 4 requests for 40 connections.
        let refusedByAS = setup.asRequests - setup.attestations
        #expect(refusedByAS == 2, "\(setup.asRequests) AS requests, \(setup.attestations) accepted")
        #expect(setup.asRequests == 4)
        print("40 connections with 2 unverifiable certificates: \(setup.asRequests) AS requests (\(refusedByAS) refused) in \(ContinuousClock.now - start)")
        // A genuine peer is still served.
        let client = PeerObjectClient(peers: try setup.peers(), port: setup.port)
        let bytes = try await client.fetch(host: "127.0.0.1", key: "shards/深 x/a.bin", etag: "\"E1\"", range: 0...9)
        #expect(bytes == Array(setup.content[0...9]))
    }

    /// `count` TCP connections that each send part of a ClientHello and stall, opened at once; prints, sorted, how
    /// long after the last one opened each was closed by the server (null: still open after 10 s). Which of them the
    /// server takes first does not matter, so nothing waits for it to have taken any.
    static let stallScript = """
        import json, select, socket, sys, time
        port, count = int(sys.argv[1]), int(sys.argv[2])
        hello = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03])
        held = []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(hello)
            held.append(s)
        start = time.monotonic()
        closed = {}
        while len(closed) < count and time.monotonic() - start < 10:
            ready, _, _ = select.select([s for s in held if s not in closed], [], [], 0.5)
            for s in ready:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    closed[s] = time.monotonic() - start
        print(json.dumps(sorted(closed.values()) + [None] * (count - len(closed))))
        """

    static func stalled(_ count: Int, port: Int) throws -> [Double?] {
        let result = try Programs.run("/usr/bin/env", ["python3", "-c", Self.stallScript, String(port), String(count)])
        let list = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [Any], "\(result.stderr)")
        return list.map { $0 as? Double }
    }

    @Test func stalledHandshakeIsClosedAfterTheTimeout() async throws {
        var limits = PeerObjectServer.Limits()
        limits.handshakeTimeout = .seconds(2)
        let setup = try await Setup(limits: limits)
        defer { setup.stopTrustee(); Task { await setup.finish() } }
        let closed = try Self.stalled(2, port: setup.port)
        // Both stall mid-ClientHello (under the cap of 64): each is closed at ~2 s.
        #expect(closed.allSatisfy { ($0 ?? 99) > 1.0 && ($0 ?? 99) < 4.0 }, "\(closed)")
        print("a handshake stalled mid-ClientHello was closed after \(closed) s (timeout 2 s)")
    }

    @Test func connectionsOverTheCapAreRefused() async throws {
        var limits = PeerObjectServer.Limits()
        limits.maxConnections = 3
        limits.handshakeTimeout = .seconds(5)
        let setup = try await Setup(limits: limits)
        defer { setup.stopTrustee(); Task { await setup.finish() } }
        let closed = try Self.stalled(4, port: setup.port)
        // One of the four is closed at once; the three held ones only at the handshake timeout.
        let over = try #require(closed.first ?? nil, "\(closed)")
        #expect(over < 1.0, "\(closed)")
        #expect(closed.dropFirst().allSatisfy { ($0 ?? 0) > 2.0 }, "\(closed)")
        print("over the cap of 3: closed after \(over) s; the held stalled ones after \(closed.dropFirst())")
        // Once they are gone, a peer is served again.
        let client = PeerObjectClient(peers: try setup.peers(), port: setup.port)
        let bytes = try await client.fetch(host: "127.0.0.1", key: "shards/深 x/a.bin", etag: "\"E1\"", range: 0...9)
        #expect(bytes == Array(setup.content[0...9]))
    }

    @Test func manifestIsParsedOncePerChange() async throws {
        let setup = try await Setup()
        defer { setup.stopTrustee(); Task { await setup.finish() } }
        let client = PeerObjectClient(peers: try setup.peers(), port: setup.port)
        for _ in 0..<5 {
            _ = try await client.fetch(host: "127.0.0.1", key: "shards/深 x/a.bin", etag: "\"E1\"", range: 0...9)
        }
        #expect(setup.server.manifestParses == 1)
        // The fetcher replaces the manifest: the next request sees the new one.
        var manifest = Manifest()
        manifest.entries["shards/深 x/a.bin"] = .init(size: UInt64(setup.content.count), etag: "\"E2\"", crc64: 1)
        try manifest.encoded().write(to: URL(fileURLWithPath: setup.dir.path + "/cache/model.manifest.json"), options: .atomic)
        let error = await #expect(throws: PeerError.self) {
            try await client.fetch(host: "127.0.0.1", key: "shards/深 x/a.bin", etag: "\"E1\"", range: 0...9)
        }
        #expect(error?.status == 412)
        _ = try await client.fetch(host: "127.0.0.1", key: "shards/深 x/a.bin", etag: "\"E2\"", range: 0...9)
        #expect(setup.server.manifestParses == 2)
    }

    /// A sharing peer whose certificate expired (made 7 hours ago, valid for 6) is refused by the server before the
    /// Attestation Service is asked, and a server with an expired certificate is refused by the client.
    @Test func expiredPeerCertificateIsRefused() async throws {
        let setup = try await Setup()
        defer { setup.stopTrustee(); Task { await setup.finish() } }
        let past = Date().addingTimeInterval(-7 * 3600)
        let stale = PeerObjectClient(peers: try Setup.peers(trustee: setup.trustee, http: setup.http, now: past), port: setup.port)
        let error = await #expect(throws: PeerError.self) {
            try await stale.fetch(host: "127.0.0.1", key: "shards/深 x/a.bin", etag: "\"E1\"", range: 0...9)
        }
        // The server refused this certificate in the handshake (its log says why: expired).
        #expect(error?.message.contains("CERTIFICATE_UNKNOWN") == true, "\(String(describing: error))")
        // Only the stale client's check of the server reached the AS.
        #expect(setup.asRequests == 1)

        // The client side's check, with the reason it gives.
        let verifier = PeerVerifier(attestationService: setup.trustee.url + "as/", policyIDs: ["default"], allowSample: true, http: setup.http)
        let expired = try AttestedCertificate.make(attester: SampleAttester(), now: past)
        let refusal = await #expect(throws: VerificationError.self) { try await verifier.verify(certificate: expired.der) }
        #expect(refusal?.message.contains("certificate expired at") == true, "\(String(describing: refusal))")
        #expect(setup.asRequests == 1)
    }

    /// A production host (not itself sample) refuses sample peers, before asking the Attestation Service.
    @Test func samplePeersAreRefusedUnlessThisHostIsSample() async throws {
        let setup = try await Setup()
        defer { setup.stopTrustee(); Task { await setup.finish() } }
        let strict = PeerVerifier(attestationService: setup.trustee.url + "as/", policyIDs: ["default"], allowSample: false, http: setup.http)
        let sample = try AttestedCertificate.make(attester: SampleAttester())
        let error = await #expect(throws: VerificationError.self) { try await strict.verify(certificate: sample.der) }
        #expect(error?.message.contains("sample evidence") == true)
        #expect(setup.asRequests == 0)
    }
}
