import CaidTestSupport
import Foundation
import Testing

/// `caid attest` and `caid get-resource` as an operator runs them, against the test KBS behaving as each released
/// Trustee (`Tests/peers/trustee_server.py` PROFILES): TDX through the fake configfs-tsm, two GPUs through the fake
/// NVML, GPU 1 failing its report.
@Suite(.serialized) struct TrusteeProfileTests {
    static let password = "model password from KMS\n"
    static let resource = "kbs:///default/aliyun/model-decryption-key"

    /// What each generation verifies GPUs from, and how many `/attest` it takes caid to find out (the default `auto`).
    static let profiles: [(name: String, dialect: String, form: String, attests: Int)] = [
        ("openanolis-1.5.2", "0.1.0", "embedded", 1),
        // Device evidence first: 1.6–1.8 panic on it (connection dropped), 1.9 answers 502; then embedded.
        ("openanolis-1.6", "0.4.0", "embedded", 2),
        ("openanolis-1.9", "0.4.0", "embedded", 2),
        ("upstream-0.15", "0.4.0", "device", 1),
        ("upstream-0.16", "0.4.0", "device", 1),
        ("upstream-0.17", "0.4.0", "device", 1),
    ]

    final class Host {
        let dir: TemporaryDirectory
        let tsm: FakeTSM
        let nvml: String
        let kbs: TrusteePeer

        init(profile: String, tls: (certificate: String, key: String)? = nil, options: [String] = []) async throws {
            dir = try TemporaryDirectory("caid-profile")
            // The firmware's log, and RTMRs that match it, as a verifier that replays the log requires.
            try Data(AttesterTests.ccel(events: 3, padding: 0xFF).table).write(to: URL(fileURLWithPath: dir.path + "/CCEL"))
            tsm = try await FakeTSM(directory: dir.path, ccel: dir.path + "/CCEL")
            nvml = try FakeNVML.build(in: dir.path, behaviour: .secondFails)
            try Data(TrusteeProfileTests.password.utf8).write(to: URL(fileURLWithPath: dir.path + "/key"))
            kbs = try await TrusteePeer(
                dialect: "current", resources: ["default/aliyun/model-decryption-key": dir.path + "/key"], directory: dir.path,
                options: options, profile: profile, tls: tls)
        }

        func env(_ extra: String = "", url: String? = nil) throws -> String {
            try dir.write("cai-\(UUID().uuidString.prefix(6)).env", """
                TRUSTEE_URL="\(url ?? kbs.url)"
                MODEL_KEY_ID="\(TrusteeProfileTests.resource)"
                MODEL_OSS_BUCKET_PATH="models:/qwen"
                MODEL_OSS_ENDPOINT="http://127.0.0.1:1"
                MODEL_OSS_ACCESS_KEY_ID="LTAItest"
                MODEL_OSS_SECRET_ACCESS_KEY="oss-secret"
                CAID_ATTESTER=tdx
                CAID_TSM_REPORT_DIR=\(tsm.reportRoot)
                CAID_NVML_LIBRARY=\(nvml)
                CAID_CC_EVENTLOG=\(dir.path)/CCEL
                \(extra)
                """)
        }

        func attested() -> [[String: Any]] { kbs.requests().filter { $0["attested"] != nil } }

        func stop() {
            tsm.stop()
            dir.remove()
        }
    }

    @Test(arguments: profiles.map(\.name)) func attestAndGetResourceAgainstEachTrusteeGeneration(profile: String) async throws {
        let expected = try #require(Self.profiles.first { $0.name == profile })
        let host = try await Host(profile: profile)
        defer { host.stop() }
        let env = try host.env()

        let attest = try Programs.run(Programs.caid, ["attest", "--env", env])
        #expect(attest.status == 0, "\(attest.stderr)")
        #expect(attest.stdout.contains("tee: tdx"))
        #expect(attest.stdout.contains("kbs protocol: \(expected.dialect)"))
        #expect(attest.stdout.contains("gpu evidence: 1 GPU(s), \(expected.form) form"), "\(attest.stdout)")
        #expect(attest.stdout.contains("gpu left out: GPU 1 (GPU-00000001-fake-4a5b-8c9d-0123456789ab)"))
        #expect(attest.stdout.contains("Not Supported"))
        #expect(attest.stderr.contains("GPU left out of the evidence"))
        // The server verified exactly the working GPU, in the form it has a verifier for.
        let verified = try #require(host.attested().last)
        #expect(verified["gpus"] as? Int == 1)
        #expect(attest.stdout.contains("GPU-00000000-fake"), "the token's GPU claims name GPU 0")
        if expected.form == "embedded" {
            // Trustiflux's nonce rule for embedded reports (openanolis does not check it; the test server logs it).
            #expect(verified["embedded_nonce_ok"] as? Bool == true)
        }
        let attests = host.kbs.count("attest")
        #expect(attests == expected.attests, "\(attests) /attest requests")
        if expected.attests == 2 {
            #expect(attest.stderr.contains("sending it inside the TDX evidence instead"))
        }

        let resource = try Programs.run(Programs.caid, ["get-resource", Self.resource, "--env", env])
        #expect(resource.status == 0, "\(resource.stderr)")
        #expect(resource.stdout == Self.password)

        // A missing resource fails fast, whatever status this generation gives it, and says what to check.
        let resourcesBefore = host.kbs.count("resource")
        let missing = try Programs.run(Programs.caid, ["get-resource", "kbs:///default/aliyun/other", "--env", env])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("PluginInternalError"))
        #expect(missing.stderr.contains("check MODEL_KEY_ID"))
        #expect(host.kbs.count("resource") == resourcesBefore + 1)

        // A policy denial fails fast too (401 upstream, 403 on openanolis).
        try host.kbs.setFaults(#"{"deny_all": true}"#)
        let denied = try Programs.run(Programs.caid, ["get-resource", Self.resource, "--env", env])
        #expect(denied.status == 1)
        #expect(denied.stderr.contains("PolicyDeny"))
        #expect(denied.stderr.contains("Trustee's policy refuses"))
        #expect(host.kbs.count("resource") == resourcesBefore + 2)
    }

    /// A pinned form is sent as asked: device evidence to openanolis 1.6 fails (with no retry storm), embedded
    /// evidence to upstream goes through but leaves the GPUs unverified, which is why `auto` tries device first.
    @Test func pinnedFormsAreRespected() async throws {
        let openanolis = try await Host(profile: "openanolis-1.6")
        defer { openanolis.stop() }
        let device = try Programs.run(Programs.caid, ["attest", "--env", try openanolis.env("CAID_GPU_EVIDENCE=device")])
        #expect(device.status == 1)
        #expect(device.stderr.contains("attest"))
        #expect(openanolis.kbs.requests().contains { $0["dropped"] != nil })

        let upstream = try await Host(profile: "upstream-0.17")
        defer { upstream.stop() }
        let embedded = try Programs.run(Programs.caid, ["attest", "--env", try upstream.env("CAID_GPU_EVIDENCE=embedded")])
        #expect(embedded.status == 0, "\(embedded.stderr)")
        #expect(embedded.stdout.contains("gpu evidence: 1 GPU(s), embedded form"))
        #expect(upstream.attested().last?["gpus"] as? Int == 0)

        let off = try Programs.run(Programs.caid, ["attest", "--env", try upstream.env("CAID_GPU_EVIDENCE=off")])
        #expect(off.status == 0, "\(off.stderr)")
        #expect(off.stdout.contains("gpu evidence: none sent"))
    }

    /// A Trustee behind a private CA: CAID_TRUSTEE_CA makes it trusted; without it the handshake is refused.
    @Test func privateCertificateAuthorityForTrustee() async throws {
        let dir = try TemporaryDirectory("caid-ca")
        defer { dir.remove() }
        let (ca, cert, key) = try Self.makeCA(in: dir)
        let host = try await Host(profile: "upstream-0.17", tls: (cert, key))
        defer { host.stop() }
        #expect(host.kbs.url.hasPrefix("https://"))
        let trusted = try Programs.run(Programs.caid, ["get-resource", Self.resource, "--env", try host.env("CAID_TRUSTEE_CA=\(ca)\nCAID_GPU_EVIDENCE=off")])
        #expect(trusted.status == 0, "\(trusted.stderr)")
        #expect(trusted.stdout == Self.password)
        let untrusted = try Programs.run(Programs.caid, ["attest", "--env", try host.env("CAID_GPU_EVIDENCE=off")])
        #expect(untrusted.status == 1)
        #expect(untrusted.stderr.lowercased().contains("certificate"), "\(untrusted.stderr)")
        // Not retried: no try again can make an untrusted certificate trusted (it took 40 s of backoff before).
        #expect(untrusted.stderr.contains("CAID_TRUSTEE_CA") && !untrusted.stderr.contains("attempt 2"), "\(untrusted.stderr)")
        #expect(host.kbs.count("auth") == 1)

        // Plain http:// keeps working, with a warning that says what an attacker on the path could do.
        let plain = try Programs.run(Programs.caid, ["check-config", "--env", try host.env(url: "http://127.0.0.1:1/trustee/")])
        #expect(plain.stderr.contains("is plain http://"))
        #expect(plain.stderr.contains("hand caid a key of their own"))
    }

    /// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl.
    static func makeCA(in dir: TemporaryDirectory) throws -> (ca: String, certificate: String, key: String) {
        let directory = dir.path
        let ca = directory + "/ca.pem", caKey = directory + "/ca-key.pem"
        let cert = directory + "/server.pem", key = directory + "/server-key.pem", csr = directory + "/server.csr"
        let ext = try dir.write("ext.cnf", "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        for command in [
            ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", caKey, "-out", ca, "-subj", "/CN=caid test CA", "-days", "1"],
            ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", caKey, "-CAcreateserial", "-out", cert, "-days", "1", "-extfile", ext],
        ] {
            let result = try Programs.run("/usr/bin/env", ["openssl"] + command)
            guard result.status == 0 else { throw PeerProcess.Failure(description: "openssl \(command[0]) failed: \(result.stderr)") }
        }
        return (ca, cert, key)
    }
}
