import Foundation

/// Everything a caid host talks to, on loopback, around a small real model: the model encrypted with `caid
/// encrypt` in a bucket of the test OSS server, its password in the test KBS (which is also the Attestation Service),
/// and a stand-in inference service that serves the mounted model's files over HTTP. ``environment`` is a cai.env
/// for `caid run` against them (sample attester, gateway in mapping mode).
public final class ModelHost: Sendable {
    public let dir: TemporaryDirectory
    public let plain: String
    public let mountpoint: String
    public let oss: PeerProcess
    public let trustee: TrusteePeer
    /// The stand-in inference service; nil until ``startService()`` when the host starts without it.
    public let service: PeerProcess?
    public let servicePort: Int
    public let gatewayPort: Int
    public let namespace: String?
    public let serverAddress: String
    public let env: String
    public let socket: String

    public static let password = "demo model password"
    /// What `caid encrypt` printed as the model digest (`sha256:…`).
    public let modelDigest: String

    /// - Parameters:
    ///   - namespace: run the servers in this network namespace, listening on all its addresses (`caid run` must
    ///     then run there too); the inference stand-in is then on port 8080 and started by ``startService()``.
    ///   - gateway: `CAID_GATEWAY_MODE`. The guard of the service port is on only inside a namespace: a test in the
    ///     machine's own network must not leave filter rules in it.
    ///   - serverAddress: where caid reaches the servers (their namespace's address when caid runs elsewhere).
    ///   - sessionToken: an STS token the OSS server requires and cai.env carries (none by default).
    ///   - trusteeOptions: more options of the test KBS/AS, given the model digest (a policy naming it).
    ///   - trusteeProfile: the released Trustee the test KBS behaves as.
    public init(
        extraSettings: String = "", namespace: String? = nil, serverAddress: String = "127.0.0.1", gateway: String = "mapping",
        sessionToken: String = "", trusteeOptions: (String) -> [String] = { _ in [] }, trusteeProfile: String? = nil
    ) async throws {
        self.namespace = namespace
        self.serverAddress = serverAddress
        dir = try TemporaryDirectory("caid-host")
        plain = dir.path + "/model"
        mountpoint = dir.path + "/mnt"
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        try Self.makeModel(at: plain)
        let passfile = try dir.write("password", Self.password + "\n")
        try FileManager.default.createDirectory(atPath: dir.path + "/bucket", withIntermediateDirectories: true)
        modelDigest = try Self.encrypt(plain, into: dir.path + "/bucket/qwen", passfile: passfile)

        let host = namespace == nil ? "127.0.0.1" : "0.0.0.0"
        oss = try await PeerProcess("oss_server.py", [
            "--root", dir.path + "/bucket", "--bucket", "models", "--ak", "LTAItest", "--sk", "oss-secret-value",
            "--faults", dir.path + "/oss-faults.json", "--host", host,
        ] + (sessionToken.isEmpty ? [] : ["--token", sessionToken]), directory: dir.path, namespace: namespace)
        trustee = try await TrusteePeer(
            dialect: "current", resources: ["default/aliyun/model-decryption-key": passfile], directory: dir.path,
            options: ["--host", host] + trusteeOptions(modelDigest), namespace: namespace, profile: trusteeProfile)
        if namespace == nil {
            let service = try await PeerProcess("static_server.py", ["--root", mountpoint], directory: dir.path)
            self.service = service
            servicePort = service.port
        } else {
            service = nil
            servicePort = 8080
        }
        gatewayPort = Programs.unusedPort()
        socket = dir.path + "/run/caid.sock"
        env = try dir.write("cai.env", """
            TRUSTEE_URL="http://\(serverAddress):\(trustee.peer.port)\(trustee.prefix)"
            TRUSTEE_POLICY="default"
            MODEL_KEY_ID="kbs:///default/aliyun/model-decryption-key"
            MODEL_ENCRYPTION_METHOD="gocryptfs"
            MODEL_OSS_BUCKET_PATH="models:/qwen"
            MODEL_OSS_ENDPOINT="http://\(serverAddress):\(oss.port)"
            MODEL_OSS_ACCESS_KEY_ID="LTAItest"
            MODEL_OSS_SECRET_ACCESS_KEY="oss-secret-value"
            MODEL_OSS_SESSION_TOKEN=\(sessionToken)
            MODEL_SERVICE_PORT=\(servicePort)
            MODEL_MOUNT_POINT=\(mountpoint)
            CAID_HEALTH_SOCKET=\(socket)
            CAID_CACHE_DIR=\(dir.path)/cache
            \(extraSettings.contains("CAID_ATTESTER=") ? "" : "CAID_ATTESTER=sample")
            CAID_OSS_REGION=cn-test
            CAID_GATEWAY_MODE=\(gateway)
            CAID_GATEWAY_PORT=\(gatewayPort)
            CAID_SERVICE_GUARD=\(namespace == nil ? "off" : "on")
            \(extraSettings)
            """)
    }

    /// Encrypts `plain` with `caid encrypt`. - Returns: the model digest it printed.
    static func encrypt(_ plain: String, into cipher: String, passfile: String) throws -> String {
        let encrypt = try Programs.run(Programs.caid, ["encrypt", "--plain", plain, "--cipher", cipher, "--passfile", passfile])
        guard encrypt.status == 0 else { throw PeerProcess.Failure(description: "caid encrypt failed: \(encrypt.stderr)") }
        guard let line = encrypt.stdout.split(separator: "\n").first(where: { $0.hasPrefix("model digest: sha256:") }) else {
            throw PeerProcess.Failure(description: "caid encrypt printed no model digest: \(encrypt.stdout)")
        }
        return String(line.dropFirst("model digest: ".count).prefix(71))
    }

    /// Puts another model (other weights, same password) into the bucket at `models:/<name>`.
    /// - Returns: its digest, and a cai.env that serves it from a cache of its own.
    public func addModel(_ name: String, seed: Int) throws -> (digest: String, env: String) {
        let other = dir.path + "/" + name + "-plain"
        try Self.makeModel(at: other, seed: seed)
        let digest = try Self.encrypt(other, into: dir.path + "/bucket/" + name, passfile: dir.path + "/password")
        var text = try String(contentsOfFile: env, encoding: .utf8)
        text = text.replacingOccurrences(of: "MODEL_OSS_BUCKET_PATH=\"models:/qwen\"", with: "MODEL_OSS_BUCKET_PATH=\"models:/\(name)\"")
            .replacingOccurrences(of: "CAID_CACHE_DIR=\(dir.path)/cache", with: "CAID_CACHE_DIR=\(dir.path)/cache-\(name)")
        return (digest, try dir.write(name + ".env", text))
    }

    /// Puts a model with one large shard (`shardMiB` of random bytes, seeded) and a small config into the bucket at
    /// `models:/<name>`, served from a cache of its own.
    /// - Returns: its plaintext directory, the cai.env (with `extraSettings`), and the bucket key of the shard's
    ///   ciphertext (for OSS faults aimed at it).
    public func addLargeModel(_ name: String, shardMiB: Int, seed: Int = 11, extraSettings: String = "") throws -> (plain: String, env: String, shardKey: String) {
        let plain = dir.path + "/" + name + "-plain"
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        var generator = SeededBytes(seed: UInt64(seed))
        let shard = FileManager.default.createFile(atPath: plain + "/model-00001-of-00001.safetensors", contents: nil)
        guard shard, let handle = FileHandle(forWritingAtPath: plain + "/model-00001-of-00001.safetensors") else {
            throw PeerProcess.Failure(description: "cannot write the large shard")
        }
        for _ in 0..<shardMiB { handle.write(generator.next(1 << 20)) }
        try handle.close()
        try #"{"architectures": ["DemoForCausalLM"], "hidden_size": 64}"#.write(toFile: plain + "/config.json", atomically: true, encoding: .utf8)
        _ = try Self.encrypt(plain, into: dir.path + "/bucket/" + name, passfile: dir.path + "/password")
        var largest = (size: 0, path: "")
        let root = dir.path + "/bucket/" + name
        for relative in FileManager.default.subpaths(atPath: root) ?? [] {
            let size = (try? FileManager.default.attributesOfItem(atPath: root + "/" + relative)[.size] as? Int) ?? 0
            if size > largest.size { largest = (size, relative) }
        }
        var text = try String(contentsOfFile: env, encoding: .utf8)
        text = text.replacingOccurrences(of: "MODEL_OSS_BUCKET_PATH=\"models:/qwen\"", with: "MODEL_OSS_BUCKET_PATH=\"models:/\(name)\"")
            .replacingOccurrences(of: "CAID_CACHE_DIR=\(dir.path)/cache", with: "CAID_CACHE_DIR=\(dir.path)/cache-\(name)")
        return (plain, try dir.write(name + ".env", text + "\n" + extraSettings + "\n"), name + "/" + largest.path)
    }

    /// A small model as vLLM expects one: a real safetensors file, a config and a tokenizer file.
    public static func makeModel(at path: String, seed: Int = 7) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let script = """
            import json, sys, numpy as np
            from safetensors.numpy import save_file
            root = sys.argv[1]
            rng = np.random.default_rng(int(sys.argv[2]))
            save_file({"embed.weight": rng.standard_normal((256, 64)).astype(np.float32),
                       "lm_head.weight": rng.standard_normal((64, 256)).astype(np.float16)}, root + "/model.safetensors")
            json.dump({"architectures": ["DemoForCausalLM"], "hidden_size": 64, "vocab_size": 256}, open(root + "/config.json", "w"), indent=2)
            json.dump({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}}, open(root + "/tokenizer.json", "w"))
            """
        let result = try Programs.run("/usr/bin/env", ["python3", "-c", script, path, String(seed)])
        guard result.status == 0 else { throw PeerProcess.Failure(description: "making the sample model failed: \(result.stderr)") }
    }

    /// A cai.env for another host of the same deployment, with its own cache, mount point and health socket under
    /// `<dir>/<name>/`. - Returns: the file and those paths.
    public func hostEnvironment(_ name: String, extraSettings: String) throws -> (env: String, mountpoint: String, socket: String, cache: String) {
        let base = dir.path + "/" + name
        try FileManager.default.createDirectory(atPath: base + "/mnt", withIntermediateDirectories: true)
        var text = try String(contentsOfFile: env, encoding: .utf8)
        text = text.replacingOccurrences(of: "MODEL_MOUNT_POINT=\(mountpoint)", with: "MODEL_MOUNT_POINT=\(base)/mnt")
            .replacingOccurrences(of: "CAID_HEALTH_SOCKET=\(socket)", with: "CAID_HEALTH_SOCKET=\(base)/run/caid.sock")
            .replacingOccurrences(of: "CAID_CACHE_DIR=\(dir.path)/cache", with: "CAID_CACHE_DIR=\(base)/cache")
        let file = try dir.write(name + ".env", text + "\n" + extraSettings + "\n")
        return (file, base + "/mnt", base + "/run/caid.sock", base + "/cache/model")
    }

    /// Starts the inference stand-in on port 8080 of the namespace (a service that comes up after caid).
    public func startService() async throws -> PeerProcess {
        try await PeerProcess("static_server.py", ["--root", mountpoint, "--host", "0.0.0.0", "--port", "8080"], directory: dir.path, namespace: namespace)
    }

    /// Bytes the OSS server has served in object GETs so far.
    public func ossServedBytes() throws -> Int {
        let command = ["/usr/bin/env", "python3", "-c", "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())", "http://127.0.0.1:\(oss.port)/__stats"]
        let fetched = try namespace.map { try Programs.run("/usr/bin/nsenter", NamespacePair.enter($0) + command) }
            ?? Programs.run(command[0], Array(command.dropFirst()))
        let stats = try JSONSerialization.jsonObject(with: Data(fetched.stdout.utf8)) as? [String: Any]
        return stats?["get_bytes"] as? Int ?? -1
    }

    public func setOSSFaults(_ json: String) throws {
        try json.write(toFile: dir.path + "/oss-faults.json", atomically: true, encoding: .utf8)
    }

    /// Unmounts anything left and removes the directory.
    public func remove() {
        let others = ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).map { dir.path + "/" + $0 + "/mnt" }
        for path in [mountpoint] + others where FileManager.default.fileExists(atPath: path) {
            _ = try? Programs.run("/bin/umount", ["-l", path])
        }
        dir.remove()
    }
}

/// Reproducible bytes without a dependency: splitmix64.
struct SeededBytes {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next(_ count: Int) -> Data {
        var data = Data(count: count)
        data.withUnsafeMutableBytes { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for index in words.indices {
                state &+= 0x9E37_79B9_7F4A_7C15
                var z = state
                z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                words[index] = z ^ (z >> 31)
            }
        }
        return data
    }
}
