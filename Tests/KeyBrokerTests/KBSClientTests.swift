import AsyncHTTPClient
import Attestation
import CaidBase
import CaidConfiguration
import CaidTestSupport
import Foundation
import KBSProtocol
import KeyBroker
import Logging
import Synchronization
import Testing

/// The KBS client against the Trustee-compatible test KBS on loopback, in both dialects.
@Suite(.serialized) struct KBSClientTests {
    static let resource = ResourceURI(repository: "default", type: "aliyun", tag: "model-decryption-key")
    static let password = "Zm9vYmFy/+= model password\n"

    struct Setup {
        let dir: TemporaryDirectory
        let kbs: TrusteePeer
        let http = HTTPClient(eventLoopGroupProvider: .singleton)

        init(dialect: String, options: [String] = []) async throws {
            dir = try TemporaryDirectory("caid-kbs")
            let secret = dir.path + "/model-key"
            try Data(KBSClientTests.password.utf8).write(to: URL(fileURLWithPath: secret))
            kbs = try await TrusteePeer(dialect: dialect, resources: [KBSClientTests.resource.path: secret], directory: dir.path, options: options)
        }

        func client(
            _ choice: KBSClient.DialectChoice = .auto, key: TEEKey.Algorithm = .ecdhES_A256KW,
            provider: EvidenceProvider = EvidenceProvider(attester: SampleAttester(), gpu: nil), attempts: Int = 4,
            wall: WallClock = WallClock()
        ) -> KBSClient {
            KBSClient(
                trusteeURL: kbs.url, protocol: choice, provider: provider, currentKeyAlgorithm: key, http: http,
                retry: .init(attempts: attempts, firstDelay: .milliseconds(50), requestTimeout: .seconds(10)), logger: quietLogger,
                now: { wall.now })
        }

        func finish() async {
            try? await http.shutdown()
            dir.remove()
        }
    }

    /// The client's wall clock: real time plus however far the test moved it on, so that expiries pass at once.
    final class WallClock: Sendable {
        private let offset = Mutex<TimeInterval>(0)
        var now: Date { Date().addingTimeInterval(offset.withLock { $0 }) }
        func advance(by seconds: TimeInterval) { offset.withLock { $0 += seconds } }
    }

    static func text(_ secret: Secret) -> String { secret.withBytes { String(decoding: $0, as: UTF8.self) } }

    @Test(arguments: [("legacy", KBSClient.DialectChoice.legacy, KBSDialect.legacy), ("current", .current, .current), ("legacy", .auto, .legacy), ("current", .auto, .current)])
    func attestsAndFetchesTheKey(server: String, choice: KBSClient.DialectChoice, expected: KBSDialect) async throws {
        let setup = try await Setup(dialect: server)
        defer { Task { await setup.finish() } }
        let client = setup.client(choice)
        let session = try await client.attest()
        #expect(session.dialect == expected)
        #expect(session.tee == .sample)
        #expect(session.token.claims["tee"]?.stringValue == "sample")
        #expect(session.token.claims["evaluation-reports"]?.arrayValue?.first?["policy-id"]?.stringValue == "default")
        let secret = try await client.resource(Self.resource)
        #expect(Self.text(secret) == Self.password)
        if choice == .auto, server == "legacy" {
            // The 0.4.0 probe was refused as a version mismatch, then 0.1.0 went through.
            #expect(setup.kbs.count("auth") == 2)
        } else {
            #expect(setup.kbs.count("auth") == 1)
        }
    }

    @Test(arguments: TEEKey.Algorithm.allCases, ["trustee", "jwcrypto"])
    func everyKeyTypeAndJWELayoutOfTheCurrentDialect(key: TEEKey.Algorithm, layout: String) async throws {
        let setup = try await Setup(dialect: "current", options: ["--jwe-layout", layout])
        defer { Task { await setup.finish() } }
        let secret = try await setup.client(.current, key: key).resource(Self.resource)
        #expect(Self.text(secret) == Self.password)
        #expect(setup.kbs.requests().contains { ($0["alg"] as? String) == key.rawValue })
    }

    @Test func tokenAndSessionAreReused() async throws {
        let setup = try await Setup(dialect: "current")
        defer { Task { await setup.finish() } }
        let client = setup.client()
        for _ in 0..<3 { _ = try await client.resource(Self.resource) }
        _ = try await client.attest()
        #expect(setup.kbs.count("auth") == 1)
        #expect(setup.kbs.count("resource") == 3)
    }

    /// Concurrent callers on a fresh client: one handshake, shared. A second handshake would clear the first one's
    /// cookies between its /auth and /attest (behind a sticky balancer, it would even land on another replica).
    @Test func concurrentCallersShareOneHandshake() async throws {
        let setup = try await Setup(dialect: "legacy", options: ["--replicas", "3"])
        defer { Task { await setup.finish() } }
        let client = setup.client(.legacy)
        let secrets = try await withThrowingTaskGroup(of: String.self) { group in
            for index in 0..<8 {
                group.addTask { index % 2 == 0 ? Self.text(try await client.resource(Self.resource)) : "\(try await client.attest().dialect)" }
            }
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        #expect(secrets.filter { $0 == Self.password }.count == 4)
        #expect(setup.kbs.count("auth") == 1)
        #expect(setup.kbs.count("attest") == 1)
        #expect(setup.kbs.count("resource") == 4)
    }

    /// Trustee's session cookie lives five minutes from /auth; the token may live longer. A session is reused only
    /// while both are valid: no request goes out with a cookie about to expire.
    @Test func aSessionIsReusedOnlyWhileItsCookieLives() async throws {
        let setup = try await Setup(dialect: "current", options: ["--profile", "upstream-0.17", "--session-seconds", "32", "--token-seconds", "3600"])
        defer { Task { await setup.finish() } }
        let wall = WallClock()
        let client = setup.client(wall: wall)
        _ = try await client.resource(Self.resource)
        _ = try await client.resource(Self.resource)
        #expect(setup.kbs.count("auth") == 1)
        // 32 s cookie, 30 s margin: 2.5 s on the session is no longer handed out, although the token is valid.
        wall.advance(by: 2.5)
        _ = try await client.resource(Self.resource)
        #expect(setup.kbs.count("auth") == 2)
        // No resource request was refused on the way (it would have been retried and counted).
        #expect(setup.kbs.count("resource") == 3)
    }

    @Test func stickyLoadBalancerCookieIsKept() async throws {
        // Three replicas with in-memory sessions: a client that dropped the balancer's cookie would land on
        // another replica for /attest and be refused.
        let setup = try await Setup(dialect: "legacy", options: ["--replicas", "3"])
        defer { Task { await setup.finish() } }
        let secret = try await setup.client(.legacy).resource(Self.resource)
        #expect(Self.text(secret) == Self.password)
        let cookies = setup.kbs.requests().compactMap { $0["cookie"] as? String }
        #expect(cookies.count == 2)
        #expect(cookies.allSatisfy { $0.contains("SERVERID=") && $0.contains("kbs-session-id=") })
        #expect(setup.kbs.count("auth") == 1)
    }

    @Test func expiredSessionMeansAFreshHandshake() async throws {
        let setup = try await Setup(dialect: "legacy", options: ["--session-seconds", "32"])
        defer { Task { await setup.finish() } }
        let wall = WallClock()
        let client = setup.client(.legacy, wall: wall)
        _ = try await client.resource(Self.resource)
        // The session runs out: the server forgot it, and the client's cookie is within the margin of its expiry.
        // (The client's clock moves on by less than the cookie's life: a fresh cookie must not look expired.)
        try setup.kbs.setFaults(#"{"expire_sessions": 1}"#)
        wall.advance(by: 3)
        let secret = try await client.resource(Self.resource)
        #expect(Self.text(secret) == Self.password)
        #expect(setup.kbs.count("auth") == 2)
        // The dead session was not even tried.
        #expect(setup.kbs.count("resource") == 2)
    }

    @Test func unauthorizedResourceTriggersReattestation() async throws {
        // The session cookie outlives the server's session: the KBS answers 401, the client handshakes again.
        let setup = try await Setup(dialect: "current")
        defer { Task { await setup.finish() } }
        let client = setup.client(.current)
        _ = try await client.resource(Self.resource)
        try setup.kbs.setFaults(#"{"expire_sessions": 1}"#)
        let secret = try await client.resource(Self.resource)
        #expect(Self.text(secret) == Self.password)
        #expect(setup.kbs.count("auth") == 2)
        // One resource request was refused with the expired session, then retried with the new one.
        #expect(setup.kbs.count("resource") == 3)
    }

    @Test func policyDenialFailsFastWithTheServersDetail() async throws {
        let setup = try await Setup(dialect: "current")
        defer { Task { await setup.finish() } }
        try setup.kbs.setFaults(#"{"deny_all": true}"#)
        let error = await #expect(throws: KBSError.self) { try await setup.client().resource(Self.resource) }
        #expect(error?.kind == .denied)
        #expect(error?.status == 403)
        #expect(error?.description.contains("resource policy denied") == true)
        #expect(setup.kbs.count("resource") == 1)
    }

    @Test func missingResourceFailsFast() async throws {
        let setup = try await Setup(dialect: "legacy")
        defer { Task { await setup.finish() } }
        let error = await #expect(throws: KBSError.self) {
            try await setup.client().resource(ResourceURI(repository: "default", type: "aliyun", tag: "no-such-key"))
        }
        #expect(error?.kind == .notFound)
        #expect(error?.description.contains("no-such-key") == true)
        #expect(setup.kbs.count("resource") == 1)
    }

    @Test func unavailableServerIsRetried() async throws {
        let setup = try await Setup(dialect: "current")
        defer { Task { await setup.finish() } }
        try setup.kbs.setFaults(#"{"unavailable": 2}"#)
        let secret = try await setup.client().resource(Self.resource)
        #expect(Self.text(secret) == Self.password)
    }

    @Test func unreachableServerSaysWhere() async throws {
        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        defer { Task { try? await http.shutdown() } }
        let client = KBSClient(
            trusteeURL: "http://127.0.0.1:1/x/", protocol: .auto, provider: EvidenceProvider(attester: SampleAttester(), gpu: nil),
            // AsyncHTTPClient retries a refused connection until the deadline: a short one keeps the test short.
            http: http, retry: .init(attempts: 2, firstDelay: .milliseconds(10), requestTimeout: .seconds(1)), logger: quietLogger)
        let error = await #expect(throws: KBSError.self) { try await client.attest() }
        #expect(error?.kind == .unavailable)
        #expect(error?.description.contains("http://127.0.0.1:1/x/kbs/v0/auth") == true)
    }

    @Test(arguments: ["garbage", "huge"]) func malformedResponsesAreRefused(fault: String) async throws {
        let setup = try await Setup(dialect: "current")
        defer { Task { await setup.finish() } }
        try setup.kbs.setFaults(#"{"\#(fault)": 1}"#)
        let error = await #expect(throws: KBSError.self) { try await setup.client().resource(Self.resource) }
        #expect(error?.kind == .protocolViolation)
        #expect(error?.description.contains(fault == "huge" ? "larger than 1 MiB" : "not a JSON object") == true)
    }

    /// An attester that hashes the wrong thing: the KBS must refuse its evidence.
    struct WrongBinding: Attester {
        var tee: TEEType { .sample }
        func evidence(reportData: [UInt8], gpuEvidence: JSONValue?) -> JSONValue {
            var data = reportData
            data[0] ^= 1
            return SampleAttester().evidence(reportData: data, gpuEvidence: nil)
        }
    }

    @Test(arguments: ["legacy", "current"]) func wrongBindingIsRejected(dialect: String) async throws {
        let setup = try await Setup(dialect: dialect)
        defer { Task { await setup.finish() } }
        let client = setup.client(provider: EvidenceProvider(attester: WrongBinding(), gpu: nil), attempts: 2)
        let error = await #expect(throws: KBSError.self) { try await client.resource(Self.resource) }
        #expect(error?.step == "attest")
        #expect(error?.description.contains("does not match the binding") == true)
        #expect(setup.kbs.count("resource") == 0)
    }

    @Test func noCommonDialectIsPermanent() async throws {
        let setup = try await Setup(dialect: "legacy")
        defer { Task { await setup.finish() } }
        let error = await #expect(throws: KBSError.self) { try await setup.client(.current).attest() }
        #expect(error?.kind == .versionMismatch)
        #expect(error?.isPermanent == true)
        #expect(error?.description.contains("CAID_KBS_PROTOCOL") == true)
    }
}
