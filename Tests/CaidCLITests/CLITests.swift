import CaidControl
import CaidCore
import CaidTestSupport
import Foundation
import Logging
import ServiceLifecycle
import Testing

/// The built `caid` binary, run as an operator would run it.
@Suite(.serialized) struct CLITests {
    let example = Programs.packageRoot + "/etc/caid/cai.env.example"

    @Test func everyCommandHasHelp() throws {
        for command in ["", "run", "check-config", "health", "mount", "encrypt", "fetch", "attest", "get-resource", "gateway", "tunnel"] {
            let result = try Programs.run(Programs.caid, (command.isEmpty ? [] : [command]) + ["--help"])
            #expect(result.status == 0, "caid \(command) --help")
            #expect(result.stdout.contains("USAGE"), "caid \(command) --help")
        }
    }

    @Test func versionIsPrinted() throws {
        let result = try Programs.run(Programs.caid, ["--version"])
        #expect(result.status == 0)
        #expect(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == CaidVersion.current)
    }

    @Test func checkConfigPrintsTheEffectiveConfigurationWithSecretsRedacted() throws {
        // This machine has no TEE: the example's CAID_ATTESTER=auto is refused (see checkConfigRefusesWhatRunRefuses).
        let result = try Programs.run(Programs.caid, ["check-config", "--env", example], environment: Programs.environment(["CAID_ATTESTER": "sample"]))
        #expect(result.status == 0)
        #expect(result.stdout.contains("MODEL_OSS_SECRET_ACCESS_KEY=<redacted>"))
        #expect(result.stdout.contains("MODEL_SERVICE_PORT=8080"))
        #expect(!(result.stdout + result.stderr).contains("example-access-key-secret"))
    }

    @Test func badConfigurationExits78NamingFileLineAndKey() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let secret = "do-not-print-me"
        let env = try dir.write("cai.env", """
            TRUSTEE_URL="http://trustee"
            MODEL_KEY_ID="kbs:///default/aliyun/model-decryption-key"
            MODEL_ENCRYPTION_METHOD="sam"
            MODEL_OSS_BUCKET_PATH="bucket:/model"
            MODEL_OSS_ENDPOINT="https://oss-cn-beijing.aliyuncs.com"
            MODEL_OSS_ACCESS_KEY_ID="id"
            MODEL_OSS_SECRET_ACCESS_KEY="\(secret)
            MODEL_SERVICE_PORT=eighty

            """)
        for command in ["check-config", "run"] {
            let result = try Programs.run(Programs.caid, [command, "--env", env])
            #expect(result.status == 78)
            #expect(result.stderr.contains("\(env):3: MODEL_ENCRYPTION_METHOD: 'sam'"))
            #expect(result.stderr.contains("\(env):7: MODEL_OSS_SECRET_ACCESS_KEY: has an unterminated quote"))
            #expect(result.stderr.contains("\(env):8: MODEL_SERVICE_PORT: 'eighty' is not a TCP port"))
            #expect(!(result.stdout + result.stderr).contains(secret))
        }
        let badOverride = try Programs.run(Programs.caid, ["check-config", "--env", example], environment: Programs.environment(["CAID_LOG_LEVEL": "loud"]))
        #expect(badOverride.status == 78)
        #expect(badOverride.stderr.contains("environment variable: CAID_LOG_LEVEL: 'loud' is not a log level"))

        let missing = try Programs.run(Programs.caid, ["check-config", "--env", dir.path + "/nope.env"])
        #expect(missing.status == 78)
        #expect(missing.stderr.contains("nope.env: cannot be read"))
    }

    /// `check-config` makes the checks `run` makes before starting anything, so the unit needs no `ExecStartPre=`
    /// (whose 78 `RestartPreventExitStatus=` does not cover): a host without a TEE under `CAID_ATTESTER=auto`, a
    /// `CAID_TRUSTEE_CA` or `CAID_TOKEN_CERTS` that holds no certificate are refused by both, with the same words.
    @Test func checkConfigRefusesWhatRunRefuses() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let notPEM = try dir.write("ca.pem", "not a certificate\n")
        let cases: [(overrides: [String: String], expected: [String])] = [
            ([:], ["CAID_ATTESTER: no TEE found"]),
            (["CAID_ATTESTER": "sample", "CAID_TRUSTEE_CA": notPEM], ["CAID_TRUSTEE_CA: '\(notPEM)'"]),
            (["CAID_ATTESTER": "sample", "CAID_TOKEN_CERTS": notPEM], ["CAID_TOKEN_CERTS: "]),
            // Every problem at once, not only the first.
            (["CAID_TRUSTEE_CA": notPEM, "CAID_TOKEN_CERTS": notPEM], ["CAID_ATTESTER: no TEE found", "CAID_TRUSTEE_CA: ", "CAID_TOKEN_CERTS: "]),
        ]
        for (overrides, expected) in cases {
            var environment = Programs.environment(overrides)
            environment["CAID_HEALTH_SOCKET"] = dir.path + "/never.sock"
            for command in ["check-config", "run"] {
                let result = try Programs.run(Programs.caid, [command, "--env", example], environment: environment)
                #expect(result.status == 78, "\(command) \(overrides): \(result.stderr)")
                for text in expected { #expect(result.stderr.contains("\(example): \(text)"), "\(command) \(overrides): \(result.stderr)") }
                #expect(result.stderr.contains("caid did not start"))
                #expect(!result.stdout.contains("# effective configuration"))
            }
        }
        let fine = try Programs.run(Programs.caid, ["check-config", "--env", example], environment: Programs.environment(["CAID_ATTESTER": "sample"]))
        #expect(fine.status == 0, "\(fine.stderr)")
    }

    @Test func runRefusesToStartWithoutATEE() throws {
        // The shipped example says CAID_ATTESTER=auto; this machine has no TDX: caid must not fall back to sample.
        let result = try Programs.run(Programs.caid, ["run", "--env", example], environment: Programs.environment(["CAID_HEALTH_SOCKET": "/tmp/caid-never.sock"]))
        #expect(result.status == 78)
        #expect(result.stderr.contains("no TEE found"))
    }

    /// The whole daemon on loopback: attestation and key from the test KBS, the model from the test OSS server,
    /// the mount, the gateway in mapping mode; systemd notifications; a request through `caid tunnel`; a clean stop;
    /// a second start from the warm cache.
    @Test func runBringsTheModelUpBehindTheGatewayAndStopsCleanly() async throws {
        let host = try await ModelHost()
        defer { host.remove() }
        let notify = try NotifySocket(path: host.dir.path + "/notify.sock")
        let daemon = try Programs.start(
            Programs.caid, ["run", "--env", host.env],
            environment: Programs.environment(["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"]))
        defer { if daemon.exited() == nil { daemon.signal(SIGKILL); _ = daemon.wait() } }

        var messages: [String] = []
        notify.receive(into: &messages, timeout: .seconds(60)) { all in all.contains { $0.hasPrefix("READY=1") } }
        #expect(messages.contains { $0.hasPrefix("READY=1\nSTATUS=ready") }, "\(messages) \(daemon.stderr)")
        // While starting, systemd was told which stage caid was in.
        #expect(messages.contains { $0.contains("STATUS=") && !$0.contains("STATUS=ready") })

        var info = stat()
        #expect(stat(host.socket, &info) == 0 && info.st_mode & 0o777 == 0o660)
        let health = try Programs.run(Programs.caid, ["health", "--socket", host.socket])
        #expect(health.status == 0, "\(health.stdout) \(health.stderr)")
        for service in ["attestation", "key", "fetch", "cachefs", "gateway", "health"] {
            #expect(health.stdout.contains(service), "\(service) missing from \(health.stdout)")
        }
        #expect(!health.stdout.contains(ModelHost.password))
        let json = try Programs.run(Programs.caid, ["health", "--json", "--socket", host.socket])
        #expect(try HealthRoutes.decode(Data(json.stdout.utf8)).ready)
        // A watch prints the table at once and is there to see the stop.
        let watch = try Programs.start(Programs.caid, ["health", "--watch", "--socket", host.socket])
        defer { if watch.exited() == nil { watch.signal(SIGKILL); _ = watch.wait() } }
        try await watch.waitForOutput("SERVICE")

        // The mounted model is the plaintext, byte for byte.
        for name in ["model.safetensors", "config.json", "tokenizer.json"] {
            let mounted = FileManager.default.contents(atPath: host.mountpoint + "/" + name)
            let original = FileManager.default.contents(atPath: host.plain + "/" + name)
            #expect(mounted != nil && mounted == original, "\(name)")
        }

        // A client request through the attested tunnel, answered by the stand-in service from the mount.
        let tunnelPort = Programs.unusedPort()
        let tunnel = try Programs.start(Programs.caid, ["tunnel", "--listen", "127.0.0.1:\(tunnelPort)", "--as-addr", host.trustee.url + "as/", "--allow-sample"])
        defer { tunnel.signal(SIGTERM); _ = tunnel.wait() }
        try await tunnel.waitForOutput("proxy listening")
        let response = try Programs.run("/usr/bin/env", ["curl", "-sS", "--max-time", "20", "-x", "http://127.0.0.1:\(tunnelPort)", "http://127.0.0.1:\(host.gatewayPort)/config.json"])
        #expect(response.status == 0, "\(response.stderr)")
        #expect(response.stdout.contains("DemoForCausalLM"))

        let served = try host.ossServedBytes()
        #expect(served > 0)

        let started = ContinuousClock.now
        daemon.signal(SIGTERM)
        let result = await daemon.wait(timeout: .seconds(15))
        #expect(result?.status == 0, "\(result?.stderr ?? "killed after 15 s")")
        #expect(ContinuousClock.now - started < .seconds(15))
        // caid closed the watch as it stopped, and the watch says why it ended.
        let watched = await watch.wait(timeout: .seconds(10))
        #expect(watched?.status == 2, "\(watched?.stderr ?? "still watching 10 s after the stop")")
        #expect(watched?.stderr.contains("caid stopped") == true)
        notify.receive(into: &messages, timeout: .seconds(2)) { $0.contains { $0.hasPrefix("STOPPING=1") } }
        #expect(messages.contains { $0.hasPrefix("STOPPING=1") })
        #expect(!FileManager.default.fileExists(atPath: host.socket))
        #expect(!FileManager.default.fileExists(atPath: host.mountpoint + "/config.json"), "still mounted after stop")
        let log = result?.stderr ?? ""
        #expect(!log.contains("oss-secret-value"))
        #expect(!log.contains(ModelHost.password))

        let gone = try Programs.run(Programs.caid, ["health", "--socket", host.socket])
        #expect(gone.status == 2)

        // A second start finds the cache complete and verified: no new download.
        let again = try Programs.start(Programs.caid, ["run", "--env", host.env], environment: Programs.environment(["NOTIFY_SOCKET": notify.path]))
        defer { if again.exited() == nil { again.signal(SIGKILL); _ = again.wait() } }
        var second: [String] = []
        notify.receive(into: &second, timeout: .seconds(60)) { all in all.contains { $0.hasPrefix("READY=1") } }
        #expect(second.contains { $0.hasPrefix("READY=1") }, "\(again.stderr)")
        #expect(try host.ossServedBytes() == served)
        again.signal(SIGTERM)
        #expect(await again.wait(timeout: .seconds(15))?.status == 0)
    }


    @Test func healthExitsOneWhenAliveButNotReady() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let socket = dir.path + "/caid.sock"
        let logger = quietLogger
        let registry = HealthRegistry()
        await registry.register("key", required: true)
        await registry.set("key", .backoff, detail: "retrying in 8s", error: "Trustee answered 503")
        let server = HealthServer(path: socket, registry: registry, metrics: HealthMetrics(), logger: logger)
        try await withRunningServices([server]) {
            // The server says it runs once it listens.
            #expect(await registry.wait(for: "health", toBe: .running)?.state == .running)
            let result = try Programs.run(Programs.caid, ["health", "--socket", socket])
            #expect(result.status == 1)
            #expect(result.stdout.contains("key"))
            #expect(result.stdout.contains("backoff"))
            #expect(result.stdout.contains("last error: Trustee answered 503"))
        }
    }

    @Test func tunnelNeedsTheAttestationService() throws {
        let result = try Programs.run(Programs.caid, ["tunnel"])
        #expect(result.status == 64)
        #expect(result.stderr.contains("--as-addr"))
    }

    @Test func systemdUnitVerifies() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        // systemd-analyze checks that ExecStart= exists: point it at the caid just built. It also runs `man` for
        // a man: Documentation=, whose page only the package installs.
        let shipped = try String(contentsOfFile: Programs.packageRoot + "/systemd/caid.service", encoding: .utf8)
        #expect(shipped.contains("ExecStart=/usr/bin/caid run --env /etc/caid/cai.env"))
        #expect(!shipped.split(separator: "\n").contains { $0.hasPrefix("ExecStartPre=") }, "a refusal in ExecStartPre= restarts forever: RestartPreventExitStatus= covers the main process only")
        let unit = shipped.replacingOccurrences(of: "/usr/bin/caid", with: Programs.caid).replacingOccurrences(of: " man:caid(1)", with: "")
        let path = try dir.write("caid.service", unit, mode: 0o644)
        let result = try Programs.run("/usr/bin/systemd-analyze", ["verify", path])
        #expect(result.status == 0, "\(result.stderr)")
        // Unknown or misspelt settings are only warnings: none may appear.
        #expect(!result.stderr.contains("caid.service"), "\(result.stderr)")
        #expect(unit.contains("RestartPreventExitStatus=78") && unit.contains("Type=notify"))
    }
}
