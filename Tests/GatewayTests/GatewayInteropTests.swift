import AsyncHTTPClient
import Attestation
import AttestationService
import CaidCore
import CaidTestSupport
import Crypto
import Foundation
import RATLS
import Testing

@testable import Gateway

/// caid's gateway against an independent TNG 2.2.1 client (Tests/peers/tng_client.py: OpenSSL, cryptography, cbor2,
/// jwcrypto, h2) and the test Attestation Service, over real sockets on loopback.
@Suite(.serialized) struct GatewayInteropTests {
    final class Setup: @unchecked Sendable {
        let dir: TemporaryDirectory
        let service: PeerProcess
        let trustee: TrusteePeer
        let server: GatewayServer
        let port: Int
        let page: String

        init(
            asAPI: String = "legacy", trusteeOptions: [String] = [], certificate: AttestedCertificate? = nil,
            configure: (inout GatewayConfiguration) -> Void = { _ in }
        ) async throws {
            dir = try TemporaryDirectory("caid-gateway")
            page = "<html>tokens from the model " + String(repeating: "x", count: 300_000) + "</html>\n"
            try FileManager.default.createDirectory(atPath: dir.path + "/www", withIntermediateDirectories: true)
            try Data(page.utf8).write(to: URL(fileURLWithPath: dir.path + "/www/index.html"))
            service = try await PeerProcess("static_server.py", ["--root", dir.path + "/www"], directory: dir.path)
            trustee = try await TrusteePeer(dialect: "current", resources: [:], directory: dir.path, options: ["--as-api", asAPI, "--as-policy", "model-serving"] + trusteeOptions)
            var configuration = GatewayConfiguration(mode: .mapping, listenPort: 0, servicePort: UInt16(service.port))
            configuration.listenHost = "127.0.0.1"
            configure(&configuration)
            server = try GatewayServer(configuration: configuration, certificate: try certificate ?? AttestedCertificate.make(attester: SampleAttester()), logger: quietLogger)
            port = try await server.start()
        }

        var asAddress: String { trustee.url + "as/" }

        func client(_ arguments: [String]) throws -> (status: Int32, report: [String: Any]) {
            Self.report(try startClient(arguments).wait())
        }

        /// The TNG client started, for clients that must run at once.
        func startClient(_ arguments: [String]) throws -> Programs.Running {
            try Programs.start("/usr/bin/env", ["python3", Programs.packageRoot + "/Tests/peers/tng_client.py", "--port", String(port)] + arguments)
        }

        /// The exit status and JSON report of a finished client (what it wrote on stderr when it wrote no report).
        static func report(_ result: Programs.Result) -> (status: Int32, report: [String: Any]) {
            let report = (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]) ?? ["stderr": result.stderr]
            return (result.status, report)
        }

        /// Stops the test AS and service now (see `finish()`, which may not get to run before the process exits).
        func stopPeers() {
            for process in [trustee.peer.process, service.process] {
                process.signal(SIGKILL)
                _ = process.wait()
            }
        }

        func finish() async {
            await server.stop()
            dir.remove()
        }
    }

    static func streams(_ report: [String: Any]) -> [[String: Any]] { report["streams"] as? [[String: Any]] ?? [] }

    @Test(arguments: ["legacy", "current"]) func tngClientVerifiesAndTunnels(asAPI: String) async throws {
        let setup = try await Setup(asAPI: asAPI)
        defer { Task { await setup.finish() } }
        let (status, report) = try setup.client(["--as-addr", setup.asAddress, "--policy", "default", "--policy", "model-serving", "--path", "/index.html"])
        #expect(status == 0, "\(report)")
        #expect(report["tls_version"] as? String == "TLSv1.3")
        #expect(report["alpn"] as? String == "h2")
        #expect(report["tee"] as? String == "sample")
        #expect(report["token_tee"] as? String == "sample")
        let stream = try #require(Self.streams(report).first)
        #expect(stream["status"] as? String == "200")
        let body = stream["body"] as? String ?? ""
        #expect(body.hasPrefix("HTTP/1.0 200") || body.hasPrefix("HTTP/1.1 200"))
        #expect(body.hasSuffix(setup.page))
        #expect(stream["ended"] as? Bool == true)
    }

    @Test func manyConcurrentStreamsOnOneConnection() async throws {
        let setup = try await Setup()
        defer { Task { await setup.finish() } }
        let (status, report) = try setup.client(["--as-addr", setup.asAddress, "--streams", "40", "--path", "/index.html"])
        #expect(status == 0, "\(report)")
        let streams = Self.streams(report)
        #expect(streams.count == 40)
        #expect(streams.allSatisfy { ($0["status"] as? String) == "200" && (($0["body"] as? String)?.hasSuffix(setup.page) ?? false) })
    }

    @Test func tls12IsRefused() async throws {
        let setup = try await Setup()
        defer { Task { await setup.finish() } }
        let (status, report) = try setup.client(["--tls12", "--skip-verify"])
        #expect(status == 1)
        #expect(report["handshake"] as? String == "failed")
    }

    @Test func clientWithoutALPNIsClosed() async throws {
        let setup = try await Setup()
        defer { Task { await setup.finish() } }
        let (status, report) = try setup.client(["--no-alpn", "--skip-verify"])
        #expect(status == 1)
        #expect(report["alpn"] is NSNull || report["alpn"] == nil)
        #expect(report["server_closed"] as? Bool == true)
    }

    @Test func nonConnectRequestGets400() async throws {
        let setup = try await Setup()
        defer { Task { await setup.finish() } }
        let (_, report) = try setup.client(["--skip-verify", "--method", "GET"])
        let stream = try #require(Self.streams(report).first, "\(report)")
        #expect(stream["status"] as? String == "400")
        #expect((stream["body"] as? String)?.contains("should be CONNECT") == true)
    }

    @Test func stalledHandshakeIsCut() async throws {
        let setup = try await Setup { $0.handshakeTimeout = .seconds(1) }
        defer { Task { await setup.finish() } }
        let (_, report) = try setup.client(["--stall", "5"])
        #expect(report["closed_by_server"] as? Bool == true)
        #expect((report["after"] as? Double ?? 99) < 4)
    }

    /// TNG <= 2.2.4 holds its Finished while it asks the AS (tng/src/tunnel/cert_verifier.rs @ v2.2.4); TNG >= 2.2.5
    /// asks right after the handshake, before the HTTP/2 preface (@ v2.2.6). An AS slower than the gateway's
    /// first-bytes timeout (10 s by default; 2 s here, with a 4 s AS, to keep the test short) must not cost the
    /// tunnel. Both kinds of client at once, so that the test waits out the slow AS once.
    @Test func tngClientSurvivesASlowAttestationService() async throws {
        let setup = try await Setup(asAPI: "current", trusteeOptions: ["--as-delay", "4"]) { $0.firstBytesTimeout = .seconds(2) }
        defer { Task { await setup.finish() } }
        let clients = try [true, false].map { inHandshake in
            (inHandshake, try setup.startClient(["--as-addr", setup.asAddress, "--path", "/index.html"] + (inHandshake ? ["--verify-in-handshake"] : [])))
        }
        for (inHandshake, client) in clients {
            let finished = try #require(await client.wait(timeout: .seconds(60)), "the client (in handshake: \(inHandshake)) did not finish")
            let (status, report) = Setup.report(finished)
            #expect(status == 0, "in handshake: \(inHandshake): \(report)")
            #expect(report["token_tee"] as? String == "sample")
            let waited = (inHandshake ? report["handshake_seconds"] : report["verified_after_seconds"]) as? Double ?? 0
            #expect(waited >= 3.5, "the client (in handshake: \(inHandshake)) waited \(waited) s for the AS: \(report)")
            #expect(report["verified_in_handshake"] as? Bool == (inHandshake ? true : nil))
            let stream = try #require(Self.streams(report).first, "\(report)")
            #expect(stream["status"] as? String == "200")
            #expect((stream["body"] as? String)?.hasSuffix(setup.page) == true)
        }
    }

    @Test func handshakeTimeoutStillCutsAClientThatWaitsLonger() async throws {
        let setup = try await Setup(trusteeOptions: ["--as-delay", "5"]) { $0.handshakeTimeout = .seconds(2) }
        defer { Task { await setup.finish() } }
        let (_, report) = try setup.client(["--as-addr", setup.asAddress, "--verify-in-handshake", "--path", "/index.html"])
        #expect(Self.streams(report).first?["status"] as? String != "200", "\(report)")
    }

    @Test func silenceIsCutAtTheFirstBytesTimeoutButAStartedHandshakeIsNot() async throws {
        let setup = try await Setup { $0.firstBytesTimeout = .seconds(1) }
        defer { Task { await setup.finish() } }
        let (_, silent) = try setup.client(["--stall", "5", "--silent"])
        #expect(silent["closed_by_server"] as? Bool == true, "\(silent)")
        #expect((silent["after"] as? Double ?? 99) < 3)
        let (_, started) = try setup.client(["--stall", "3"])
        #expect(started["closed_by_server"] as? Bool == false, "half a ClientHello has the whole handshake timeout: \(started)")
    }

    @Test func idleConnectionIsClosedAfterTheIdleTimeout() async throws {
        let setup = try await Setup { $0.idleTimeout = .seconds(2) }
        defer { Task { await setup.finish() } }
        let (status, report) = try setup.client(["--as-addr", setup.asAddress, "--path", "/index.html", "--hold", "10"])
        #expect(status == 0, "\(report)")
        #expect(Self.streams(report).first?["status"] as? String == "200")
        let after = try #require(report["closed_by_server_after"] as? Double, "the server kept an idle connection open: \(report.filter { $0.key != "streams" })")
        #expect(after > 1 && after < 5)
    }

    @Test func connectionLimitHolds() async throws {
        let setup = try await Setup { $0.maxConnections = 2 }
        defer { Task { await setup.finish() } }
        // Two connections that stall in the handshake take both places; a third is closed at once.
        let stalled = try (0..<2).map { _ in
            try Programs.start("/usr/bin/env", ["python3", Programs.packageRoot + "/Tests/peers/tng_client.py", "--port", String(setup.port), "--stall", "8"])
        }
        // The gateway counts a connection once it has accepted it (no event for it: its budget is polled).
        await GatewayBudgetTests.waitUntil(setup.server.budget) { $0.connections == 2 }
        let (_, report) = try setup.client(["--stall", "3"])
        #expect(report["closed_by_server"] as? Bool == true)
        #expect((report["after"] as? Double ?? 99) < 1)
        for process in stalled { process.signal(SIGKILL); _ = process.wait() }
        // Places are given back when connections close.
        await GatewayBudgetTests.waitUntil(setup.server.budget) { $0.connections == 0 }
        let (status, after) = try setup.client(["--as-addr", setup.asAddress, "--path", "/index.html"])
        #expect(status == 0, "\(after)")
    }

    @Test func unreachableServiceGets502() async throws {
        let setup = try await Setup { $0.servicePort = 1 }
        defer { Task { await setup.finish() } }
        let (_, report) = try setup.client(["--skip-verify"])
        #expect(Self.streams(report).first?["status"] as? String == "502")
    }
}

/// The attested certificate's structure and binding, checked by caid's own verifier.
@Suite struct AttestedCertificateTests {
    @Test func evidenceBindsTheKeyAndTheRuntimeData() throws {
        let certificate = try AttestedCertificate.make(attester: SampleAttester())
        let spki = Array(certificate.key.publicKey.derRepresentation)
        let value = try #require(RATLSEvidenceProbe.extensionValue(in: certificate.der))
        let parsed = try RATLSEvidence.verify(extensionValue: value, subjectPublicKeyInfo: spki)
        #expect(parsed.tee == "sample")
        // The sample evidence carries SHA-384 of exactly the runtime data text.
        let evidence = try JSONDecoder().decode(JSONValue.self, from: Data(parsed.evidence))
        let reportData = evidence["report_data"]?.stringValue.flatMap(Base64.decodeStandard)
        #expect(reportData == Array(SHA384.hash(data: Array(parsed.runtimeData.utf8))))
        #expect(parsed.runtimeData.hasPrefix(#"{"rats-rs.raw_runtime_data":""#))
        #expect(!certificate.eventLogOmitted)
    }

    @Test func evidenceForAnotherKeyIsRejected() throws {
        let certificate = try AttestedCertificate.make(attester: SampleAttester())
        let value = try #require(RATLSEvidenceProbe.extensionValue(in: certificate.der))
        let other = Array(P256.Signing.PrivateKey().publicKey.derRepresentation)
        let error = #expect(throws: VerificationError.self) { try RATLSEvidence.verify(extensionValue: value, subjectPublicKeyInfo: other) }
        #expect(error?.message.contains("does not bind the certificate's key") == true)
    }

    @Test func cborMatchesTheRatsRsVector() throws {
        // rats-cert: pubkey-hash claim [1, h'00010203'] encodes as 82 01 44 00010203.
        #expect(CBOR.array([.unsigned(1), .bytes([0, 1, 2, 3])]).encoded == [0x82, 0x01, 0x44, 0x00, 0x01, 0x02, 0x03])
        #expect(try CBOR(decoding: [0x82, 0x01, 0x44, 0x00, 0x01, 0x02, 0x03]) == .array([.unsigned(1), .bytes([0, 1, 2, 3])]))
        #expect(CBOR.tagged(0xC0C000, .array([])).encoded == [0xDA, 0x00, 0xC0, 0xC0, 0x00, 0x80])
    }

    @Test func cborDecoderSurvivesGarbage() throws {
        let certificate = try AttestedCertificate.make(attester: SampleAttester())
        let valid = try #require(RATLSEvidenceProbe.extensionValue(in: certificate.der))
        let spki = Array(certificate.key.publicKey.derRepresentation)
        for round in 0..<5000 {
            var input = round % 4 == 0 ? (0..<Int.random(in: 0...64)).map { _ in UInt8.random(in: 0...255) } : valid
            if round % 4 != 0 {
                for _ in 0..<Int.random(in: 1...6) where !input.isEmpty {
                    input[Int.random(in: 0..<input.count)] = UInt8.random(in: 0...255)
                }
            }
            _ = try? CBOR(decoding: input)
            _ = try? RATLSEvidence.verify(extensionValue: input, subjectPublicKeyInfo: spki)
        }
    }
}

/// TDX and GPU evidence in the certificate, through the fake configfs-tsm and NVML, as a TNG client's AS sees it.
@Suite(.serialized) struct TDXCertificateTests {
    @Test func tdxQuoteAndGPUEvidenceBindTheCertificateKey() async throws {
        let dir = try TemporaryDirectory("caid-tdx-cert")
        defer { dir.remove() }
        let tsm = try await FakeTSM(directory: dir.path)
        defer { tsm.stop() }
        let library = try FakeNVML.build(in: dir.path)
        let certificate = try AttestedCertificate.make(attester: TDXAttester(reportRoot: tsm.reportRoot), gpu: GPUAttester(library: library))
        let value = try #require(RATLSEvidenceProbe.extensionValue(in: certificate.der))
        let parsed = try RATLSEvidence.verify(extensionValue: value, subjectPublicKeyInfo: Array(certificate.key.publicKey.derRepresentation))
        #expect(parsed.tee == "tdx")
        let evidence = try JSONDecoder().decode(JSONValue.self, from: Data(parsed.evidence))
        let quote = try #require(evidence["quote"]?.stringValue.flatMap(Base64.decodeStandard))
        let expected = Array(SHA384.hash(data: Array(parsed.runtimeData.utf8)))
        #expect(Array(quote[568..<616]) == expected)
        let gpus = evidence["gpu_evidence"]?["evidence_list"]?.arrayValue ?? []
        #expect(gpus.count == 2)
        let report = gpus.first?["attestation_report"]?.stringValue.flatMap(Base64.decodeStandard) ?? []
        #expect(Array(report.prefix(32)) == Array(expected.prefix(32)))
    }
}

/// The passport model: `GatewayService` gets a token from the test Attestation Service and serves it in the
/// certificate; the independent client (`--passport`) checks it against the AS's public key and calls nothing.
@Suite(.serialized) struct GatewayPassportTests {
    static func asCalls(_ trustee: TrusteePeer) -> Int { trustee.requests().filter { $0["as"] != nil }.count }

    static func withPassportGateway(
        tokenSeconds: Int = 300, _ body: @Sendable (_ port: Int, _ trustee: TrusteePeer, _ publicKey: String, _ page: String, _ registry: HealthRegistry) async throws -> Void
    ) async throws {
        let dir = try TemporaryDirectory("caid-passport")
        defer { dir.remove() }
        let page = "<html>passport " + String(repeating: "p", count: 50_000) + "</html>\n"
        try FileManager.default.createDirectory(atPath: dir.path + "/www", withIntermediateDirectories: true)
        try Data(page.utf8).write(to: URL(fileURLWithPath: dir.path + "/www/index.html"))
        let service = try await PeerProcess("static_server.py", ["--root", dir.path + "/www"], directory: dir.path)
        let publicKey = dir.path + "/as-key.jwk"
        let trustee = try await TrusteePeer(
            dialect: "current", resources: [:], directory: dir.path,
            options: ["--as-api", "current", "--as-policy", "model-serving", "--as-token-seconds", String(tokenSeconds), "--as-public-key", publicKey])
        // Both peers stop when released: keep them to the end.
        defer { withExtendedLifetime((service, trustee)) {} }
        let port = Programs.unusedPort()
        var configuration = GatewayConfiguration(mode: .mapping, listenPort: UInt16(port), servicePort: UInt16(service.port))
        configuration.listenHost = "127.0.0.1"
        configuration.attestationModel = .passport
        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        let attestationService = AttestationServiceClient(address: trustee.url + "as/", policyIDs: ["model-serving"], http: http)
        let registry = HealthRegistry()
        await registry.register("gateway", required: true)
        let gateway = GatewayService(
            configuration: configuration, attester: SampleAttester(), attestationService: attestationService,
            handle: ServiceHandle(name: "gateway", registry: registry, logger: quietLogger))
        do {
            try await withRunningServices([gateway]) {
                let status = await registry.wait(for: "gateway", toBe: .running)
                #expect(status?.state == .running, "\(String(describing: status))")
                try await body(port, trustee, publicKey, page, registry)
            }
        } catch {
            try? await http.shutdown()
            throw error
        }
        try await http.shutdown()
    }

    static func passportClient(_ port: Int, _ publicKey: String, _ extra: [String] = []) throws -> (Int32, [String: Any]) {
        let result = try Programs.run("/usr/bin/env", [
            "python3", Programs.packageRoot + "/Tests/peers/tng_client.py", "--port", String(port), "--passport",
            "--as-public-key", publicKey, "--policy", "model-serving", "--path", "/index.html",
        ] + extra)
        let report = (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]) ?? ["stderr": result.stderr]
        return (result.status, report)
    }

    @Test(arguments: [false, true]) func passportClientChecksTheTokenWithoutCallingTheAS(inHandshake: Bool) async throws {
        try await Self.withPassportGateway { port, trustee, publicKey, page, registry in
            let before = Self.asCalls(trustee)
            #expect(before == 1, "the gateway asks the AS once for its certificate")
            let (status, report) = try Self.passportClient(port, publicKey, inHandshake ? ["--verify-in-handshake"] : [])
            #expect(status == 0, "\(report)")
            #expect(report["model"] as? String == "passport")
            #expect(report["token_tee"] as? String == "sample")
            let stream = try #require(GatewayInteropTests.streams(report).first, "\(report)")
            #expect(stream["status"] as? String == "200")
            #expect((stream["body"] as? String)?.hasSuffix(page) == true)
            #expect(Self.asCalls(trustee) == before, "a passport client does not call the AS")
            let detail = await registry.status(of: "gateway")?.detail ?? ""
            #expect(detail.contains("passport"), "\(detail)")
        }
    }

    @Test func backgroundCheckClientIsRefusedAPassportCertificate() async throws {
        try await Self.withPassportGateway { port, trustee, _, _, _ in
            let result = try Programs.run("/usr/bin/env", [
                "python3", Programs.packageRoot + "/Tests/peers/tng_client.py", "--port", String(port), "--as-addr", trustee.url + "as/",
            ])
            #expect(result.status == 1)
            #expect(result.stdout.contains("0xC0C000"), "\(result.stdout)")
        }
    }

    @Test func tokenIsRenewedBeforeItExpires() async throws {
        // A 6 s token is renewed about 1.2 s before it runs out: a second AS call, and clients keep passing.
        try await Self.withPassportGateway(tokenSeconds: 6) { port, trustee, publicKey, _, _ in
            #expect(Self.asCalls(trustee) == 1)
            // The KBS logs each request it serves: each line wakes the check. The token was issued before this
            // started, so 6 s from here is past its exp.
            let renewed = try? await Awaiting.until("the renewal", timeout: .seconds(6), on: [.file(trustee.logPath)]) {
                Self.asCalls(trustee) >= 2 ? true : nil
            }
            #expect(renewed == true, "the token was not renewed before its exp")
            let (status, report) = try Self.passportClient(port, publicKey)
            #expect(status == 0, "\(report)")
        }
    }
}

/// The passport certificate's form and the renewal schedule, without I/O.
@Suite struct PassportCertificateTests {
    static func unsignedToken(exp: Int) -> String {
        let header = Base64.url(Array(#"{"alg":"RS384"}"#.utf8))
        let claims = Base64.url(Array(#"{"exp":\#(exp)}"#.utf8))
        return "\(header).\(claims).c2ln"
    }

    @Test func tokenGoesUnderTag0xC0C001WithTheClaims() throws {
        let draft = try AttestedCertificate.draft(attester: SampleAttester())
        let exp = Int(Date().timeIntervalSince1970) + 300
        let token = Self.unsignedToken(exp: exp)
        let certificate = try AttestedCertificate.passport(draft, token: token)
        #expect(certificate.tokenExpiry == Date(timeIntervalSince1970: TimeInterval(exp)))
        let value = try #require(RATLSEvidenceProbe.extensionValue(in: certificate.der))
        guard case .tagged(let tag, .array(let parts)) = try CBOR(decoding: value) else { Issue.record("not tagged"); return }
        #expect(tag == 0xC0C001)
        #expect(parts == [.bytes(Array(token.utf8)), .bytes(draft.claims)])
        let parsed = try RATLSEvidence.verifyToken(extensionValue: value, subjectPublicKeyInfo: Array(certificate.key.publicKey.derRepresentation))
        #expect(parsed.token == token)
        #expect(parsed.runtimeData == draft.runtimeData)
        let other = Array(P256.Signing.PrivateKey().publicKey.derRepresentation)
        #expect(throws: VerificationError.self) { try RATLSEvidence.verifyToken(extensionValue: value, subjectPublicKeyInfo: other) }
        // A background-check reader does not take a passport for evidence.
        #expect(throws: VerificationError.self) { try RATLSEvidence.verify(extensionValue: value, subjectPublicKeyInfo: Array(certificate.key.publicKey.derRepresentation)) }
    }

    @Test func tokenWithoutExpIsRefused() throws {
        let draft = try AttestedCertificate.draft(attester: SampleAttester())
        let token = Base64.url(Array(#"{"alg":"RS384"}"#.utf8)) + "." + Base64.url(Array("{}".utf8)) + ".c2ln"
        #expect(throws: VerificationError.self) { try AttestedCertificate.passport(draft, token: token) }
    }

    @Test func renewalComesBeforeTheTokenExpires() {
        let now = Date()
        let refresh = Duration.seconds(600)
        #expect(CertificateRenewer.renewalDelay(refresh: refresh, tokenExpiry: nil, now: now) == refresh)
        #expect(CertificateRenewer.renewalDelay(refresh: refresh, tokenExpiry: now.addingTimeInterval(3600), now: now) == refresh)
        #expect(CertificateRenewer.renewalDelay(refresh: refresh, tokenExpiry: now.addingTimeInterval(300), now: now) == .seconds(240))
        #expect(CertificateRenewer.renewalDelay(refresh: refresh, tokenExpiry: now.addingTimeInterval(10), now: now) == .seconds(8))
        #expect(CertificateRenewer.renewalDelay(refresh: refresh, tokenExpiry: now.addingTimeInterval(-5), now: now) == .seconds(1))
        #expect(CertificateRenewer.retryDelay(refresh: refresh, tokenExpiry: now) == .seconds(15))
        #expect(CertificateRenewer.retryDelay(refresh: refresh, tokenExpiry: nil) == refresh)
    }
}
