import Foundation

/// A test peer from `Tests/peers/` (Python) listening on a loopback port it picked and wrote to a file.
public final class PeerProcess: @unchecked Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    public let process: Programs.Running
    public let port: Int

    /// Starts `Tests/peers/<script>` with `arguments` plus `--port-file`, and waits until it listens.
    /// - Parameter namespace: a network namespace to run it in (`ip netns exec`).
    public init(_ script: String, _ arguments: [String], directory: String, namespace: String? = nil) async throws {
        let portFile = directory + "/\(script).\(UUID().uuidString.prefix(8)).port"
        let command = ["python3", Programs.packageRoot + "/Tests/peers/" + script] + arguments + ["--port-file", portFile]
        if let namespace {
            process = try Programs.start("/usr/bin/nsenter", NamespacePair.enter(namespace) + ["/usr/bin/env"] + command)
        } else {
            process = try Programs.start("/usr/bin/env", command)
        }
        // The peer renames the complete file into place (peerutil.announce_port): an event in the directory.
        do {
            port = try await process.until("\(script) listening", timeout: .seconds(20), also: [.directory(directory)]) { exited -> Int? in
                if let text = try? String(contentsOfFile: portFile, encoding: .utf8), let port = Int(text) { return port }
                if let exited { throw Failure(description: "\(script) exited: \(exited.stderr)") }
                return nil
            }
        } catch {
            process.signal(SIGKILL)
            throw Failure(description: "\(script) did not start: \(error) \(process.stderr)")
        }
    }

    deinit {
        process.signal(SIGTERM)
        _ = process.wait()
    }
}

/// The Trustee-compatible test KBS (`Tests/peers/trustee_server.py`), with its fault file and request log.
public final class TrusteePeer: Sendable {
    public let peer: PeerProcess
    public let faultsPath: String
    public let logPath: String
    public let prefix: String
    public let scheme: String

    /// - Parameters:
    ///   - dialect: `legacy` (0.1.0) or `current` (0.4.0).
    ///   - resources: `repo/type/tag` → file served for it.
    ///   - options: more arguments (`--replicas 3`, `--session-seconds 1`, `--jwe-layout jwcrypto`…).
    ///   - profile: a released Trustee to behave as (`openanolis-1.6`, `upstream-0.17`…); it sets the dialect.
    ///   - tls: serve HTTPS with this certificate chain and key (PEM files).
    public init(
        dialect: String, resources: [String: String], directory: String, prefix: String = "/trustee/", options: [String] = [],
        namespace: String? = nil, profile: String? = nil, tls: (certificate: String, key: String)? = nil
    ) async throws {
        faultsPath = directory + "/kbs-faults-\(UUID().uuidString.prefix(8)).json"
        logPath = directory + "/kbs-log-\(UUID().uuidString.prefix(8)).jsonl"
        self.prefix = prefix
        scheme = tls == nil ? "http" : "https"
        var arguments = ["--dialect", dialect, "--prefix", prefix, "--faults", faultsPath, "--log", logPath] + options
        if let profile { arguments += ["--profile", profile] }
        if let tls { arguments += ["--tls-cert", tls.certificate, "--tls-key", tls.key] }
        for (path, file) in resources.sorted(by: { $0.key < $1.key }) { arguments += ["--resource", "\(path)=\(file)"] }
        peer = try await PeerProcess("trustee_server.py", arguments, directory: directory, namespace: namespace)
    }

    /// `TRUSTEE_URL` for this KBS.
    public var url: String { "\(scheme)://127.0.0.1:\(peer.port)\(prefix)" }

    /// Replaces the fault budgets, e.g. `{"unavailable": 2}`.
    public func setFaults(_ json: String) throws {
        try json.write(toFile: faultsPath, atomically: true, encoding: .utf8)
    }

    /// The requests served so far, one JSON object each.
    public func requests() -> [[String: Any]] {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    /// How many requests went to `kbs/v0/<endpoint>` (`auth`, `attest`, `resource`).
    public func count(_ endpoint: String) -> Int {
        requests().filter { ($0["path"] as? String)?.contains("/kbs/v0/" + endpoint) == true }.count
    }
}

/// A fake configfs-tsm tree (`Tests/peers/fake_tsm.py`, FUSE) mounted in a directory of the test's own.
public final class FakeTSM: Sendable {
    public let mountpoint: String
    public let statsPath: String
    private let process: Programs.Running

    /// - Parameters:
    ///   - ccel: a firmware event log whose records the fake RTMRs start extended with (`--ccel`).
    ///   - rtmr3Extends: digests RTMR3 starts extended with, as if another agent had (`--rtmr3-extend`).
    public init(directory: String, provider: String = "tdx_guest", race: Int = 0, ccel: String? = nil, rtmr3Extends: [String] = []) async throws {
        mountpoint = directory + "/tsm-\(UUID().uuidString.prefix(8))"
        statsPath = mountpoint + ".json"
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        process = try Programs.start("/usr/bin/env", [
            "python3", Programs.packageRoot + "/Tests/peers/fake_tsm.py", mountpoint, "--provider", provider,
            "--race", String(race), "--stats", statsPath,
        ] + (ccel.map { ["--ccel", $0] } ?? []) + rtmr3Extends.flatMap { ["--rtmr3-extend", $0] })
        let mountpoint = self.mountpoint
        do {
            _ = try await process.until("fake_tsm.py mounted", timeout: .seconds(10), also: [.mounts]) { exited -> Bool? in
                var info = stat()
                if stat(mountpoint + "/report", &info) == 0 { return true }
                if let exited { throw PeerProcess.Failure(description: "fake_tsm.py exited: \(exited.stderr)") }
                return nil
            }
        } catch {
            throw PeerProcess.Failure(description: "fake_tsm.py did not mount: \(error) \(process.stderr)")
        }
    }

    /// Where the attester should look: `<mount>/report`.
    public var reportRoot: String { mountpoint + "/report" }

    /// The fake RTMR files, `<mount>/measurements/rtmr{0..3}:sha384`, as the kernel has them under
    /// `/sys/devices/virtual/misc/tdx_guest/measurements`.
    public var measurements: String { mountpoint + "/measurements" }

    /// Writes to `measurements/rtmr<N>:sha384` since start, by RTMR number.
    public func extends() -> [String: Int] {
        guard let data = FileManager.default.contents(atPath: statsPath),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        else { return [:] }
        return object["extends"] as? [String: Int] ?? [:]
    }

    /// How many report entries were made, and which are still there.
    public func stats() -> (made: Int, left: [String]) {
        guard let data = FileManager.default.contents(atPath: statsPath),
            let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        else { return (-1, []) }
        return (object["made"] as? Int ?? -1, object["left"] as? [String] ?? [])
    }

    /// Unmounts (lazily, so a stuck test cannot keep it) and stops the file system.
    public func stop() {
        _ = try? Programs.run("/bin/umount", ["-l", mountpoint])
        process.signal(SIGTERM)
        _ = process.wait()
        try? FileManager.default.removeItem(atPath: mountpoint)
    }
}

/// The fake NVML library (`Tests/peers/fake_nvml.c`), compiled into `directory`.
public enum FakeNVML {
    /// How the fake GPUs behave.
    public enum Behaviour: String, Sendable {
        /// Two GPUs in CC mode with reports.
        case working
        /// Every report call fails.
        case failing
        /// GPU 1's report call fails; GPU 0 works.
        case secondFails
        /// CC mode is off.
        case ccOff
    }

    /// Builds it and returns the path of the shared library; `failing` makes the report call fail.
    public static func build(in directory: String, failing: Bool = false) throws -> String {
        try build(in: directory, behaviour: failing ? .failing : .working)
    }

    public static func build(in directory: String, behaviour: Behaviour) throws -> String {
        let output = directory + "/libfake-nvml-\(behaviour.rawValue).so"
        let flags: [String]
        switch behaviour {
        case .working: flags = []
        case .failing: flags = ["-DFAKE_NVML_FAIL"]
        case .secondFails: flags = ["-DFAKE_NVML_FAIL_INDEX=1"]
        case .ccOff: flags = ["-DFAKE_NVML_CC_OFF"]
        }
        let result = try Programs.run("/usr/bin/env", ["cc", "-shared", "-fPIC", "-O1"] + flags
            + ["-o", output, Programs.packageRoot + "/Tests/peers/fake_nvml.c"])
        guard result.status == 0 else { throw PeerProcess.Failure(description: "cc failed: \(result.stderr)") }
        return output
    }
}

/// An ordinary self-signed P-256 certificate with no TEE evidence (made with openssl): what a host that cannot
/// attest would present.
public enum PlainCertificate {
    /// Writes `c.pem` and `k.pem` into `directory`. - Returns: their paths.
    public static func make(in directory: String) throws -> (certificate: String, key: String) {
        let certificate = directory + "/plain-cert.pem"
        let key = directory + "/plain-key.pem"
        let made = try Programs.run("/usr/bin/env", [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", certificate, "-subj", "/CN=plain", "-days", "1",
        ])
        guard made.status == 0 else { throw PeerProcess.Failure(description: "openssl req failed: \(made.stderr)") }
        return (certificate, key)
    }
}
