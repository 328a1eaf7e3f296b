import AsyncHTTPClient
import Attestation
import CaidBase
import CaidCore
import CaidTestSupport
import Foundation
import KeyBroker
import Logging
import ServiceLifecycle
import Testing

/// The `attestation` and `key` services under the supervisor, and `caid attest` / `caid get-resource` as an
/// operator runs them, against the test KBS.
@Suite(.serialized) struct ServiceAndCLITests {
    static let password = "model password from KMS\n"

    @Test func keyServiceHandsThePasswordToTheMountOnceAndRefetchesOnDemand() async throws {
        let dir = try TemporaryDirectory("caid-key")
        defer { dir.remove() }
        try Data(Self.password.utf8).write(to: URL(fileURLWithPath: dir.path + "/key"))
        let kbs = try await TrusteePeer(dialect: "current", resources: ["default/aliyun/key": dir.path + "/key"], directory: dir.path)
        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        defer { Task { try? await http.shutdown() } }
        let client = KBSClient(trusteeURL: kbs.url, protocol: .auto, provider: EvidenceProvider(attester: SampleAttester(), gpu: nil), http: http, logger: quietLogger)
        let handoff = KeyHandoff()
        let registry = HealthRegistry()
        let uri = ResourceURI(repository: "default", type: "aliyun", tag: "key")
        let specs = [
            ServiceSpec(name: "attestation") { AttestationService(client: client, handle: $0) },
            ServiceSpec(name: "key", dependencies: ["attestation"]) { KeyService(client: client, resource: uri, handoff: handoff, handle: $0) },
        ]
        try await withSupervisor(specs, registry: registry) {
            let attestation = await registry.wait(for: "attestation", toBe: .running)
            #expect(attestation?.detail?.contains("sample evidence accepted (KBS protocol 0.4.0)") == true)
            let key = await registry.wait(for: "key", toBe: .running)
            #expect(key?.detail?.contains("kbs:///default/aliyun/key") == true)
            let first = try await handoff.take()
            // One trailing newline dropped, as gocryptfs -passfile does.
            #expect(first.withBytes { String(decoding: $0, as: UTF8.self) } == "model password from KMS")
            first.wipe()
            #expect(!handoff.isHolding)
            // The health output never carries the key.
            let health = await registry.snapshot()
            #expect(!"\(health)".contains("model password"))
            // A mount that restarts asks again: the key service fetches it anew (one handshake, two resource reads).
            let second = try await handoff.take()
            #expect(second.withBytes { String(decoding: $0, as: UTF8.self) } == "model password from KMS")
            #expect(first.isEmpty)
            #expect(kbs.count("resource") == 2)
            #expect(kbs.count("auth") == 1)
        }
    }

    @Test func keyFailureIsRetriedAndShownInHealth() async throws {
        let dir = try TemporaryDirectory("caid-key")
        defer { dir.remove() }
        try Data(Self.password.utf8).write(to: URL(fileURLWithPath: dir.path + "/key"))
        let kbs = try await TrusteePeer(dialect: "current", resources: ["default/aliyun/key": dir.path + "/key"], directory: dir.path)
        try kbs.setFaults(#"{"deny": 1}"#)
        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        defer { Task { try? await http.shutdown() } }
        let client = KBSClient(trusteeURL: kbs.url, protocol: .current, provider: EvidenceProvider(attester: SampleAttester(), gpu: nil), http: http, logger: quietLogger)
        let handoff = KeyHandoff()
        let registry = HealthRegistry()
        let uri = ResourceURI(repository: "default", type: "aliyun", tag: "key")
        let specs = [ServiceSpec(name: "key") { KeyService(client: client, resource: uri, handoff: handoff, handle: $0) }]
        try await withSupervisor(specs, registry: registry) {
            let failed = await registry.wait(for: "key", toBe: .backoff)
            #expect(failed?.lastError?.contains("HTTP 403") == true)
            #expect(failed?.lastError?.contains("Policy deny") == true)
            // The policy is fixed on Trustee's side: the retry succeeds without restarting caid.
            let running = await registry.wait(for: "key", toBe: .running)
            #expect(running?.state == .running)
            let password = try await handoff.take()
            #expect(password.count == Self.password.utf8.count - 1)
        }
    }

    func writeEnv(_ dir: TemporaryDirectory, kbs: TrusteePeer, extra: String = "") throws -> String {
        try dir.write("cai-\(UUID().uuidString.prefix(6)).env", """
            TRUSTEE_URL="\(kbs.url)"
            MODEL_KEY_ID="kbs:///default/aliyun/model-decryption-key"
            MODEL_OSS_BUCKET_PATH="models:/qwen"
            MODEL_OSS_ENDPOINT="http://127.0.0.1:1"
            MODEL_OSS_ACCESS_KEY_ID="LTAItest"
            MODEL_OSS_SECRET_ACCESS_KEY="oss-secret"
            CAID_ATTESTER=sample
            \(extra)
            """)
    }

    @Test(arguments: ["legacy", "current"]) func attestAndGetResourceCommands(dialect: String) async throws {
        let dir = try TemporaryDirectory("caid-cli-kbs")
        defer { dir.remove() }
        try Data(Self.password.utf8).write(to: URL(fileURLWithPath: dir.path + "/key"))
        let kbs = try await TrusteePeer(dialect: dialect, resources: ["default/aliyun/model-decryption-key": dir.path + "/key"], directory: dir.path)
        let env = try writeEnv(dir, kbs: kbs)

        let attest = try Programs.run(Programs.caid, ["attest", "--env", env])
        #expect(attest.status == 0, "\(attest.stderr)")
        #expect(attest.stdout.contains("tee: sample"))
        #expect(attest.stdout.contains("kbs protocol: \(dialect == "legacy" ? "0.1.0" : "0.4.0")"))
        #expect(attest.stdout.contains("\"evaluation-reports\""))
        #expect(attest.stderr.contains("sample evidence, which proves nothing"))

        let raw = try Programs.run(Programs.caid, ["get-resource", "kbs:///default/aliyun/model-decryption-key", "--env", env])
        #expect(raw.status == 0, "\(raw.stderr)")
        #expect(raw.stdout == Self.password)
        let encoded = try Programs.run(Programs.caid, ["get-resource", "--base64", "kbs:///default/aliyun/model-decryption-key", "--env", env])
        #expect(encoded.stdout == Data(Self.password.utf8).base64EncodedString() + "\n")

        // Nothing secret in what caid says about itself, at the most verbose level.
        let verbose = try writeEnv(dir, kbs: kbs, extra: "CAID_LOG_LEVEL=trace")
        for command in [["attest"], ["get-resource", "kbs:///default/aliyun/model-decryption-key"]] {
            let result = try Programs.run(Programs.caid, command + ["--env", verbose])
            #expect(!result.stderr.contains("model password"))
            #expect(!result.stderr.contains("oss-secret"))
            #expect(!result.stderr.contains("PRIVATE"))
        }
        #expect(!attest.stdout.contains("model password"))
    }

    @Test func commandErrorsSayWhatAndExitMeaningfully() async throws {
        let dir = try TemporaryDirectory("caid-cli-kbs")
        defer { dir.remove() }
        try Data(Self.password.utf8).write(to: URL(fileURLWithPath: dir.path + "/key"))
        let kbs = try await TrusteePeer(dialect: "legacy", resources: ["default/aliyun/model-decryption-key": dir.path + "/key"], directory: dir.path)
        let env = try writeEnv(dir, kbs: kbs)

        let missing = try Programs.run(Programs.caid, ["get-resource", "kbs:///default/aliyun/other", "--env", env])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("HTTP 404"))
        #expect(missing.stderr.contains("default/aliyun/other"))

        let badURI = try Programs.run(Programs.caid, ["get-resource", "kbs:///only/two", "--env", env])
        #expect(badURI.status == 64)
        #expect(badURI.stderr.contains("expected 3"))

        let wrongDialect = try writeEnv(dir, kbs: kbs, extra: "CAID_KBS_PROTOCOL=0.4.0")
        let mismatch = try Programs.run(Programs.caid, ["attest", "--env", wrongDialect])
        #expect(mismatch.status == 1)
        #expect(mismatch.stderr.contains("Version Mismatch") || mismatch.stderr.contains("deserialize"))
        #expect(mismatch.stderr.contains("CAID_KBS_PROTOCOL"))

        // No TEE and no explicit sample attester: refused as a configuration problem.
        let noTEE = try dir.write("auto.env", try String(contentsOfFile: env, encoding: .utf8).replacingOccurrences(of: "CAID_ATTESTER=sample", with: "CAID_ATTESTER=auto"))
        let refused = try Programs.run(Programs.caid, ["attest", "--env", noTEE])
        #expect(refused.status == 78)
        #expect(refused.stderr.contains("no TEE found"))
    }
}
