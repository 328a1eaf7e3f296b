import CaidControl
import CaidCore
import CaidTestSupport
import Foundation
import Testing

/// The served model measured into the TEE (issue #20), end to end: `caid run` with the TDX attester on a fake
/// configfs-tsm and fake RTMR files that extend as the TDX module does (Tests/peers/fake_tsm.py), against the test
/// KBS/AS replaying the event log as each released Trustee's verifier does (Tests/peers/trustee_eventlog.py) and
/// applying a policy that names a model digest.
@Suite(.serialized) struct ModelMeasurementTests {
    /// A model host whose caid uses the fake TDX interfaces.
    final class Host: @unchecked Sendable {
        let tsm: FakeTSM
        let tsmDir: TemporaryDirectory
        let host: ModelHost
        /// The daemons' notification socket: their STATUS= and READY=1 wake the waits for their health.
        let notify: NotifySocket

        init(form: String = "tcg2", profile: String? = nil, trusteeOptions: @escaping (String) -> [String]) async throws {
            tsmDir = try TemporaryDirectory("caid-rtmr")
            tsm = try await FakeTSM(directory: tsmDir.path)
            host = try await ModelHost(
                extraSettings: """
                    CAID_ATTESTER=tdx
                    CAID_GPU_EVIDENCE=off
                    CAID_TSM_REPORT_DIR=\(tsm.reportRoot)
                    CAID_RTMR_DIR=\(tsm.measurements)
                    CAID_CC_EVENTLOG=\(tsmDir.path)/no-ccel
                    CAID_EVENTLOG_FILE=\(tsmDir.path)/aael/eventlog.json
                    CAID_EVENTLOG_FORM=\(form)
                    """,
                trusteeOptions: trusteeOptions, trusteeProfile: profile)
            notify = try NotifySocket(path: tsmDir.path + "/notify.sock")
        }

        func remove() {
            host.remove()
            tsm.stop()
            tsmDir.remove()
        }

        /// Starts `caid run` with `env` and waits until `condition` holds for its health, at most `seconds`.
        func run(_ env: String, until condition: @escaping (HealthSnapshot) -> Bool, seconds: Int = 90) async throws -> (Programs.Running, HealthSnapshot?) {
            let daemon = try Programs.start(Programs.caid, ["run", "--env", env], environment: Programs.environment(["NOTIFY_SOCKET": notify.path]))
            let socket = host.socket
            // Health is asked after each change of caid's status summary (STATUS=) and at its exit.
            let snapshot = try? await daemon.until("caid's health to match", timeout: .seconds(seconds), notify: notify) { _, exited -> HealthSnapshot?? in
                if exited != nil { return .some(nil) }
                guard let json = try? Programs.run(Programs.caid, ["health", "--json", "--socket", socket]),
                    let snapshot = try? HealthRoutes.decode(Data(json.stdout.utf8)), condition(snapshot)
                else { return nil }
                return .some(snapshot)
            }
            return (daemon, snapshot ?? nil)
        }

        func stop(_ daemon: Programs.Running) async {
            daemon.signal(SIGTERM)
            if await daemon.wait(timeout: .seconds(20)) == nil {
                daemon.signal(SIGKILL)
                _ = daemon.wait()
            }
        }
    }

    static func service(_ snapshot: HealthSnapshot?, _ name: String) -> ServiceStatus? {
        snapshot?.services.first { $0.name == name }
    }

    /// A policy requiring model A releases the key for A and refuses B; a restart with A extends nothing again and
    /// still attests; `caid attest` and health show the digest, and the verified token's claims carry it. Both log
    /// forms: TCG2 in `cc_eventlog` (upstream Trustee, openanolis >= 1.6.2) and the text `aa_eventlog` of
    /// openanolis 1.6.0.
    @Test(arguments: [("tcg2", nil as String?), ("text", "openanolis-1.6.0")])
    func aPolicyForModelAReleasesTheKeyForAAndRefusesB(form: String, profile: String?) async throws {
        let setup = try await Host(form: form, profile: profile) { digest in ["--resource-model", digest] }
        defer { setup.remove() }
        let host = setup.host
        let digestA = host.modelDigest
        let initExtend = form == "text" ? 1 : 0

        let (first, ready) = try await setup.run(host.env) { $0.ready }
        #expect(ready != nil, "caid did not get ready with model A: \(first.stderr)")
        #expect(Self.service(ready, "measure")?.detail?.contains(digestA) == true, "\(String(describing: ready))")
        #expect(Self.service(ready, "measure")?.detail?.contains("extended now") == true)
        #expect(setup.tsm.extends()["3"] == initExtend + 2, "\(setup.tsm.extends())")
        // The model's files are mounted: the key was released for model A.
        #expect(FileManager.default.contents(atPath: host.mountpoint + "/config.json") == FileManager.default.contents(atPath: host.plain + "/config.json"))
        let attest = try Programs.run(Programs.caid, ["attest", "--env", host.env])
        #expect(attest.status == 0, "\(attest.stderr)")
        #expect(attest.stdout.contains("model in the token: \(digestA)"), "\(attest.stdout)")
        #expect(attest.stdout.contains("model measured: {\"digest\":\"\(digestA)\"}"), "\(attest.stdout)")
        await setup.stop(first)

        // A restart with the same model: nothing extended again, and the evidence still verifies.
        let (second, again) = try await setup.run(host.env) { $0.ready }
        #expect(again != nil, "caid did not get ready again: \(second.stderr)")
        #expect(Self.service(again, "measure")?.detail?.contains("already measured since boot") == true, "\(String(describing: again))")
        #expect(setup.tsm.extends()["3"] == initExtend + 2, "\(setup.tsm.extends())")
        await setup.stop(second)

        // Model B on the same host: measured after A, and the key is refused.
        let (digestB, envB) = try host.addModel("other", seed: 99)
        #expect(digestB != digestA)
        let (third, refused) = try await setup.run(envB) { snapshot in
            Self.service(snapshot, "measure")?.state == .running && (Self.service(snapshot, "key")?.lastError?.contains("PolicyDeny") == true)
        }
        defer { Task { await setup.stop(third) } }
        #expect(refused != nil, "the key was not refused for model B: \(third.stderr)")
        #expect(Self.service(refused, "key")?.state != .running)
        #expect(setup.tsm.extends()["3"] == initExtend + 4)
        let checks = host.trustee.requests().compactMap { $0["model_policy"] != nil ? ($0["digest"] as? String, $0["passed"] as? Bool) : nil }
        #expect(checks.contains { $0.0 == digestA && $0.1 == true }, "\(checks)")
        #expect(checks.contains { $0.0 == digestB && $0.1 == false }, "\(checks)")
        await setup.stop(third)
    }

    /// `caid tunnel --require-model A` through the gateway: the answer, or the proxy's refusal.
    static func tunnelled(_ host: ModelHost, requiring digest: String) async throws -> String {
        let port = Programs.unusedPort()
        let tunnel = try Programs.start(Programs.caid, [
            "tunnel", "--listen", "127.0.0.1:\(port)", "--as-addr", host.trustee.url + "as/", "--require-model", digest,
        ])
        defer { tunnel.signal(SIGTERM); _ = tunnel.wait() }
        do {
            try await tunnel.waitForOutput("proxy listening")
        } catch {
            return "caid tunnel did not start: \(error)"
        }
        let result = try Programs.run("/usr/bin/env", [
            "curl", "-sS", "--max-time", "20", "-x", "http://127.0.0.1:\(port)", "-D", "-", "http://127.0.0.1:\(host.gatewayPort)/config.json",
        ])
        return result.stdout + result.stderr
    }

    /// A TNG-style client whose Attestation Service policy names model A verifies a gateway serving A and refuses
    /// one serving B, with no change to the client; `caid tunnel --require-model A` does the same from the token.
    @Test func aTNGClientRequiringModelARefusesAGatewayServingB() async throws {
        let setup = try await Host { digest in ["--as-api", "current", "--model-policy", "model-a=\(digest)"] }
        defer { setup.remove() }
        let host = setup.host
        func client() throws -> (status: Int32, report: String) {
            let result = try Programs.run("/usr/bin/env", [
                "python3", Programs.packageRoot + "/Tests/peers/tng_client.py", "--port", String(host.gatewayPort),
                "--as-addr", host.trustee.url + "as/", "--policy", "model-a", "--path", "/config.json",
            ])
            return (result.status, result.stdout + result.stderr)
        }
        let (servingA, readyA) = try await setup.run(host.env) { $0.ready }
        #expect(readyA != nil, "\(servingA.stderr)")
        let accepted = try client()
        #expect(accepted.status == 0, "\(accepted.report)")
        #expect(accepted.report.contains("DemoForCausalLM"), "\(accepted.report)")
        let viaTunnel = try await Self.tunnelled(host, requiring: host.modelDigest)
        #expect(viaTunnel.contains("200") && viaTunnel.contains("DemoForCausalLM"), "\(viaTunnel)")
        await setup.stop(servingA)

        let (_, envB) = try host.addModel("other", seed: 99)
        let (servingB, readyB) = try await setup.run(envB) { $0.ready }
        defer { Task { await setup.stop(servingB) } }
        #expect(readyB != nil, "\(servingB.stderr)")
        let refused = try client()
        #expect(refused.status == 1, "\(refused.report)")
        #expect(refused.report.contains("as_error"), "\(refused.report)")
        #expect(refused.report.contains("Reject by policy model-a"), "\(refused.report)")
        let refusedByTunnel = try await Self.tunnelled(host, requiring: host.modelDigest)
        #expect(refusedByTunnel.contains("403") && refusedByTunnel.contains("not one --require-model allows"), "\(refusedByTunnel)")
        #expect(!refusedByTunnel.contains("DemoForCausalLM"))
        await setup.stop(servingB)
    }

    /// An object whose bytes differ from the manifest (same size, so OSS's CRC-64 of the changed file still matches)
    /// is refused before anything is measured or attested.
    @Test func aChangedObjectIsRefusedBeforeAnythingIsMeasured() async throws {
        let setup = try await Host { _ in [] }
        defer { setup.remove() }
        let host = setup.host
        let bucket = host.dir.path + "/bucket/qwen"
        let largest = try FileManager.default.contentsOfDirectory(atPath: bucket)
            .filter { $0 != "gocryptfs.conf" && $0 != "gocryptfs.diriv" }
            .max { (Self.size(bucket + "/" + $0)) < (Self.size(bucket + "/" + $1)) }
        let target = bucket + "/" + (try #require(largest))
        var bytes = try #require(FileManager.default.contents(atPath: target))
        bytes[bytes.count / 2] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: target))

        let (daemon, failed) = try await setup.run(host.env) { Self.service($0, "fetch")?.state == .failed }
        defer { Task { await setup.stop(daemon) } }
        let fetch = Self.service(failed, "fetch")
        #expect(fetch?.lastError?.contains("SHA-256") == true, "\(String(describing: fetch)) \(daemon.stderr)")
        #expect(fetch?.lastError?.contains(host.modelDigest) == true)
        #expect(setup.tsm.extends()["3", default: 0] == 0, "RTMR3 was extended: \(setup.tsm.extends())")
        #expect(host.trustee.count("attest") == 0, "caid attested before the model verified")
        #expect(!FileManager.default.fileExists(atPath: host.mountpoint + "/config.json"))
        await setup.stop(daemon)
    }

    /// The digest `caid encrypt` prints is SHA-256 of the manifest file it wrote, and the file is what Python's
    /// json module writes for the same content with sorted keys and no spaces; `caid manifest` on the same volume
    /// (as for one gocryptfs made) gives the same digest.
    @Test func theModelDigestIsTheSHA256OfTheCanonicalManifest() async throws {
        let dir = try TemporaryDirectory("caid-manifest")
        defer { dir.remove() }
        try ModelHost.makeModel(at: dir.path + "/plain")
        let passfile = try dir.write("password", "pw\n")
        let encrypt = try Programs.run(Programs.caid, ["encrypt", "--plain", dir.path + "/plain", "--cipher", dir.path + "/cipher", "--passfile", passfile])
        #expect(encrypt.status == 0, "\(encrypt.stderr)")
        let check = try Programs.run("/usr/bin/env", ["python3", "-c", """
            import hashlib, json, os, sys
            root = sys.argv[1]
            raw = open(root + ".caid-manifest.json", "rb").read()
            objects = []
            for base, dirs, files in os.walk(root):
                for name in files:
                    path = os.path.join(base, name)
                    rel = os.path.relpath(path, root)
                    objects.append({"name": rel, "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(), "size": os.path.getsize(path)})
            objects.sort(key=lambda o: o["name"].encode())
            canonical = json.dumps({"objects": objects, "version": 1}, sort_keys=True, separators=(",", ":")).encode()
            print("same" if canonical == raw else "differs")
            print("sha256:" + hashlib.sha256(raw).hexdigest())
            """, dir.path + "/cipher"])
        let lines = check.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first == "same", "\(check.stdout) \(check.stderr)")
        let digest = try #require(lines.dropFirst().first)
        #expect(encrypt.stdout.contains("model digest: \(digest)"), "\(encrypt.stdout)")
        let again = try Programs.run(Programs.caid, ["manifest", "--cipher", dir.path + "/cipher"])
        #expect(again.status == 0 && again.stdout.contains("model digest: \(digest)"), "\(again.stdout) \(again.stderr)")
        let notCipher = try Programs.run(Programs.caid, ["manifest", "--cipher", dir.path + "/plain"])
        #expect(notCipher.status == 1 && notCipher.stderr.contains("not a gocryptfs ciphertext directory"))
    }

    static func size(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int) ?? 0
    }
}
