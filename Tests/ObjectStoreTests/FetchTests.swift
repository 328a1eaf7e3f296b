import AsyncHTTPClient
import CaidBase
import CaidCore
import CaidTestSupport
import Crypto
import Foundation
import ObjectStore
import OSSProtocol
import Testing

/// `caid fetch` against an OSS-compatible server that checks every signature with the official SDK's signer.
@Suite(.serialized) struct FetchTests {
    /// The test server (Tests/peers/oss_server.py) on a free loopback port.
    final class Server: @unchecked Sendable {
        let process: Programs.Running
        let port: Int
        let faults: String

        init(root: String, faults: String, pageSize: Int = 1000) async throws {
            self.faults = faults
            process = try Programs.start("/usr/bin/env", [
                "python3", Programs.packageRoot + "/Tests/peers/oss_server.py", "--root", root, "--bucket", "models",
                "--ak", "LTAItest", "--sk", "secret/+=value", "--page-size", String(pageSize), "--faults", faults,
            ])
            port = try await FileEvents.line(of: process, what: "oss_server.py listening") { line in
                line.hasPrefix("listening ") ? Int(line.dropFirst(10)) : nil
            }
        }

        func setFaults(_ json: String) throws {
            try json.write(toFile: faults, atomically: true, encoding: .utf8)
        }

        /// The ranges served so far, as (file name, start, length).
        func servedRanges() throws -> [(String, Int, Int)] {
            let fetched = try GocryptfsTool.run("/usr/bin/env", ["python3", "-c", "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())", "http://127.0.0.1:\(port)/__stats"])
            let stats = try JSONSerialization.jsonObject(with: Data(fetched.stdout.utf8)) as? [String: Any]
            return (stats?["ranges"] as? [[Any]] ?? []).compactMap { entry in
                guard entry.count == 3, let name = entry[0] as? String, let start = entry[1] as? Int, let length = entry[2] as? Int else { return nil }
                return (name, start, length)
            }
        }

        func servedBytes() throws -> Int {
            let fetched = try GocryptfsTool.run("/usr/bin/env", ["python3", "-c", "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())", "http://127.0.0.1:\(port)/__stats"])
            let data = Data(fetched.stdout.utf8)
            let stats = try JSONSerialization.jsonObject(with: data) as? [String: Any]
            return stats?["get_bytes"] as? Int ?? -1
        }

        deinit { process.signal(SIGTERM) }
    }

    struct Setup {
        let dir: TemporaryDirectory
        let source: String
        let cache: String
        let env: String
        let server: Server

        let secret: String

        init(secret: String = "secret/+=value", pageSize: Int = 1000) async throws {
            self.secret = secret
            dir = try TemporaryDirectory("caid-fetch")
            source = dir.path + "/bucket/qwen"
            cache = dir.path + "/cache"
            try FileManager.default.createDirectory(atPath: source + "/shards/深", withIntermediateDirectories: true)
            let urandom = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
            defer { try? urandom.close() }
            for (name, size) in [("gocryptfs.conf", 383), ("gocryptfs.diriv", 16), ("big.bin", 20 << 20 + 12345), ("empty", 0),
                                 ("shards/a b+c.bin", 4 << 20), ("shards/深/模型.bin", 70_001)] {
                try (try urandom.read(upToCount: size) ?? Data()).write(to: URL(fileURLWithPath: source + "/" + name))
            }
            for index in 0..<150 { try Data("small \(index)\n".utf8).write(to: URL(fileURLWithPath: source + "/shards/s\(index)")) }
            server = try await Server(root: dir.path + "/bucket", faults: dir.path + "/faults.json", pageSize: pageSize)
            env = try dir.write("cai.env", """
                TRUSTEE_URL="http://127.0.0.1:1/"
                MODEL_KEY_ID="kbs:///default/test/model-key"
                MODEL_OSS_BUCKET_PATH="models:/qwen"
                MODEL_OSS_ENDPOINT="http://127.0.0.1:\(server.port)"
                MODEL_OSS_ACCESS_KEY_ID="LTAItest"
                MODEL_OSS_SECRET_ACCESS_KEY="\(secret)"
                CAID_CACHE_DIR=\(cache)
                CAID_OSS_REGION=cn-test

                """)
        }

        func fetch(_ extra: [String] = [], environment: [String: String] = [:]) throws -> Programs.Result {
            try Programs.run(Programs.caid, ["fetch", "--env", env, "--part-size", "1"] + extra, environment: Programs.environment(environment))
        }

        /// Path → SHA-256 of every file below `root`, hidden bookkeeping files left out.
        func contents(_ root: String) throws -> [String: String] {
            var result: [String: String] = [:]
            let walker = FileManager.default.enumerator(atPath: root)
            while let relative = walker?.nextObject() as? String {
                var isDirectory: ObjCBool = false
                _ = FileManager.default.fileExists(atPath: root + "/" + relative, isDirectory: &isDirectory)
                if isDirectory.boolValue { continue }
                let data = try Data(contentsOf: URL(fileURLWithPath: root + "/" + relative))
                result[relative] = SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
            }
            return result
        }

        func expectIdentical() throws {
            let expected = try contents(source)
            let fetched = try contents(cache + "/model")
            #expect(fetched.count == expected.count)
            let differing = expected.keys.filter { fetched[$0] != expected[$0] }.sorted()
            #expect(differing.isEmpty, "differ or missing: \(differing.prefix(5))")
        }
    }

    @Test func downloadsATreeByteIdenticalAndSkipsItTheSecondTime() async throws {
        let setup = try await Setup(pageSize: 40)
        defer { setup.dir.remove() }
        let first = try setup.fetch()
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.stdout.contains("all 156 verified"))
        try setup.expectIdentical()
        let served = try setup.server.servedBytes()
        let second = try setup.fetch()
        #expect(second.status == 0)
        #expect(second.stdout.contains("156 already verified"))
        #expect(try setup.server.servedBytes() == served)
        // An object removed from the bucket leaves the cache too.
        try FileManager.default.removeItem(atPath: setup.source + "/shards/s7")
        let third = try setup.fetch()
        #expect(third.stdout.contains("1 stale removed"))
        #expect(!FileManager.default.fileExists(atPath: setup.cache + "/model/shards/s7"))
        #expect(!(first.stdout + first.stderr + second.stderr).contains("secret/+=value"))
    }

    @Test func retries503sTruncatedBodiesAndClockSkew() async throws {
        let setup = try await Setup()
        defer { setup.dir.remove() }
        try setup.server.setFaults(#"{"status_503": 4, "truncate": 3, "skew_seconds": 3600}"#)
        let result = try setup.fetch()
        #expect(result.status == 0, "\(result.stderr.suffix(2000))")
        try setup.expectIdentical()
    }

    @Test func aCorruptedBodyIsNeverMovedIntoPlace() async throws {
        let setup = try await Setup()
        defer { setup.dir.remove() }
        try setup.server.setFaults(#"{"corrupt": 1}"#)
        let first = try setup.fetch(["--concurrency", "1"])
        #expect(first.status == 1)
        #expect(first.stderr.contains("does not match OSS's"))
        // Whatever failed is absent, not half there; the rest is verified and a second run completes it.
        let second = try setup.fetch()
        #expect(second.status == 0, "\(second.stderr)")
        try setup.expectIdentical()
    }

    @Test func aWrongSecretFailsFastWithOSSsCodeAndRequestID() async throws {
        let setup = try await Setup(secret: "wrong-secret-value")
        defer { setup.dir.remove() }
        let started = ContinuousClock.now
        let result = try setup.fetch()
        #expect(result.status == 1)
        #expect(result.stderr.contains("403 SignatureDoesNotMatch"))
        #expect(result.stderr.contains("request id "))
        #expect(!result.stderr.contains("wrong-secret-value"))
        #expect(ContinuousClock.now - started < .seconds(10))
    }

    /// The fetcher in-process, as the fetch service of `caid run` uses it.
    func fetcher(_ setup: Setup, limits: OSSClient.ListingLimits = .init()) throws -> Fetcher {
        let endpoint = try Endpoint.resolve(endpoint: URL(string: "http://127.0.0.1:\(setup.server.port)")!, bucket: "models", region: "cn-test").get()
        let client = OSSClient(
            endpoint: endpoint, bucket: "models",
            credentials: OSSCredentials(accessKeyID: "LTAItest", secret: Secret(Array(setup.secret.utf8))), http: HTTPClient.shared,
            limits: limits)
        return Fetcher(client: client, prefix: "qwen", cacheDirectory: setup.cache + "/model", logger: quietLogger)
    }

    @Test func theFetchServiceRunsUnderTheSupervisor() async throws {
        let setup = try await Setup()
        defer { setup.dir.remove() }
        let fetcher = try fetcher(setup)
        let registry = HealthRegistry()
        try await withSupervisor([ServiceSpec(name: "fetch") { FetchService(fetcher: fetcher, handle: $0) }], registry: registry) {
            let status = await registry.wait(for: "fetch", toBe: .running)
            #expect(status?.detail == "156 objects verified (156 fetched, 0 already cached); no model manifest in the bucket")
        }
        try setup.expectIdentical()
    }

    /// A cache on a filesystem too small for the model: health says how much is missing, the service backs off
    /// instead of failing for good, and the download completes once there is room.
    @Test func aFullDiskIsAWaitNotAFailure() async throws {
        let setup = try await Setup()
        defer { setup.dir.remove() }
        try FileManager.default.createDirectory(atPath: setup.cache, withIntermediateDirectories: true)
        let mounted = try Programs.run("/bin/mount", ["-t", "tmpfs", "-o", "size=8m", "tmpfs", setup.cache])
        #expect(mounted.status == 0, "\(mounted.stderr)")
        defer { _ = try? Programs.run("/bin/umount", ["-l", setup.cache]) }
        let fetcher = try fetcher(setup)
        let registry = HealthRegistry()
        let spec = ServiceSpec(name: "fetch", restart: RestartPolicy(baseDelay: .milliseconds(100), maxDelay: .milliseconds(300))) {
            FetchService(fetcher: fetcher, handle: $0)
        }
        try await withSupervisor([spec], registry: registry) {
            let waiting = await registry.wait(for: "fetch", toBe: .backoff)
            #expect(waiting?.lastError?.contains("disk full:") == true, "\(waiting?.lastError ?? "")")
            #expect(waiting?.lastError?.contains("more bytes needed at") == true)
            let grown = try Programs.run("/bin/mount", ["-o", "remount,size=64m", setup.cache])
            #expect(grown.status == 0, "\(grown.stderr)")
            let status = await registry.wait(for: "fetch", toBe: .running)
            #expect(status?.detail?.contains("156 objects verified") == true)
        }
        try setup.expectIdentical()
    }

    @Test func aRefusedSignatureStopsTheFetchServiceForGood() async throws {
        let setup = try await Setup(secret: "not-the-secret")
        defer { setup.dir.remove() }
        let fetcher = try fetcher(setup)
        let registry = HealthRegistry()
        try await withSupervisor([ServiceSpec(name: "fetch") { FetchService(fetcher: fetcher, handle: $0) }], registry: registry) {
            let status = await registry.wait(for: "fetch", toBe: .failed)
            #expect(status?.lastError?.contains("SignatureDoesNotMatch") == true)
            #expect(status?.lastError?.contains("not-the-secret") == false)
        }
    }

    /// Waits until the download's checkpoint of big.bin records at least `count` parts, and returns how many.
    static func checkpointedParts(in setup: Setup, atLeast count: Int) async throws -> Int {
        let cache = setup.cache, root = setup.dir.path
        return try await FileEvents.wait(in: { [root, cache, cache + "/model.staging"] }, what: "\(count) parts checkpointed") {
            guard let data = try? Data(contentsOf: URL(fileURLWithPath: cache + "/model.staging/big.bin.parts")),
                let checkpoint = try? JSONDecoder().decode(Checkpoint.self, from: data), checkpoint.crcs.count >= count else { return nil }
            return checkpoint.crcs.count
        }
    }

    @Test func aKilledDownloadResumesWithoutFetchingFinishedPartsAgain() async throws {
        let setup = try await Setup()
        defer { setup.dir.remove() }
        try setup.server.setFaults(#"{"delay_ms": 60}"#)
        let first = try Programs.start(Programs.caid, ["fetch", "--env", setup.env, "--part-size", "1", "--concurrency", "2"])
        // Kill it once it is well into the 20 MiB object.
        let staged = UInt64(try await Self.checkpointedParts(in: setup, atLeast: 8)) << 20
        first.signal(SIGKILL)
        _ = first.wait()
        #expect(staged >= 8 << 20)
        try setup.server.setFaults("{}")
        let before = try setup.server.servedBytes()
        let second = try setup.fetch()
        #expect(second.status == 0, "\(second.stderr.suffix(1000))")
        try setup.expectIdentical()
        let fetchedAgain = UInt64(try setup.server.servedBytes() - before)
        let total: UInt64 = 20 << 20 + 12345 + 383 + 16 + (4 << 20) + 70_001 + 150 * 10
        #expect(fetchedAgain <= total - staged + (2 << 20), "fetched \(fetchedAgain) bytes again after \(staged) were staged")
    }

    /// A power loss after parts were recorded as done but before they reached the disk: the staging file has
    /// zeros where two recorded parts were and is cut short inside a third. The resumed fetch re-downloads exactly
    /// those parts and the ones never recorded, and the result verifies.
    @Test func aCrashThatLostRecordedPartsReDownloadsExactlyThose() async throws {
        let setup = try await Setup()
        defer { setup.dir.remove() }
        try setup.server.setFaults(#"{"delay_ms": 60}"#)
        let first = try Programs.start(Programs.caid, ["fetch", "--env", setup.env, "--part-size", "1", "--concurrency", "2"])
        let checkpointPath = setup.cache + "/model.staging/big.bin.parts"
        _ = try await Self.checkpointedParts(in: setup, atLeast: 8)
        first.signal(SIGKILL)
        _ = first.wait()
        let checkpoint = try JSONDecoder().decode(Checkpoint.self, from: try Data(contentsOf: URL(fileURLWithPath: checkpointPath)))
        let recorded = Set(checkpoint.crcs.keys)
        #expect(recorded.count >= 8)
        // The crash: two recorded parts read back as zeros, and the file ends inside the last recorded part.
        let sorted = recorded.sorted()
        let zeroed = [sorted[1], sorted[3]]
        let cut = try #require(sorted.last)
        let staging = setup.cache + "/model.staging/big.bin"
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: staging))
        for index in zeroed {
            try handle.seek(toOffset: UInt64(index) << 20)
            try handle.write(contentsOf: Data(count: 1 << 20))
        }
        try handle.truncate(atOffset: (UInt64(cut) << 20) + 1000)
        try handle.close()

        try setup.server.setFaults("{}")
        let before = try setup.server.servedRanges().count
        let second = try setup.fetch()
        #expect(second.status == 0, "\(second.stderr.suffix(1000))")
        #expect(second.stderr.contains("3 part(s) recorded as done were not on disk intact"))
        try setup.expectIdentical()
        let again = Set(try setup.server.servedRanges().dropFirst(before).filter { $0.0 == "big.bin" }.map { $0.1 >> 20 })
        let parts = Set(0...((20 << 20 + 12345) >> 20))
        #expect(again == parts.subtracting(recorded).union(zeroed + [cut]))
    }

    /// Before the mount, the cache holds exactly what the bucket lists: a file renamed into place that the manifest
    /// never recorded, a leftover of a deleted object, a link, an empty directory and an old staging file all go.
    @Test func theCacheHoldsExactlyWhatTheBucketLists() async throws {
        let setup = try await Setup()
        defer { setup.dir.remove() }
        let first = try setup.fetch()
        #expect(first.status == 0, "\(first.stderr.suffix(1000))")
        let model = setup.cache + "/model"
        try Data("deleted from the bucket".utf8).write(to: URL(fileURLWithPath: model + "/shards/old-shard.bin"))
        try FileManager.default.createDirectory(atPath: model + "/debris/deeper", withIntermediateDirectories: true)
        try Data("debris".utf8).write(to: URL(fileURLWithPath: model + "/debris/deeper/x"))
        try FileManager.default.createSymbolicLink(atPath: model + "/passwd", withDestinationPath: "/etc/passwd")
        try FileManager.default.createDirectory(atPath: model + "/empty-dir", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: setup.cache + "/model.staging", withIntermediateDirectories: true)
        try Data(count: 1000).write(to: URL(fileURLWithPath: setup.cache + "/model.staging/gone.bin"))
        // A file renamed into place just before a crash, so the manifest does not know it: it is fetched and checked again.
        let manifestPath = setup.cache + "/model.manifest.json"
        var manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: manifestPath))) as? [String: Any] ?? [:]
        if var entries = manifest["entries"] as? [String: Any] {
            entries["qwen/shards/s7"] = nil
            manifest["entries"] = entries
        }
        try JSONSerialization.data(withJSONObject: manifest).write(to: URL(fileURLWithPath: manifestPath))
        try Data("substituted".utf8).write(to: URL(fileURLWithPath: model + "/shards/s7"))

        let second = try setup.fetch()
        #expect(second.status == 0, "\(second.stderr.suffix(1000))")
        try setup.expectIdentical()
        for gone in ["/shards/old-shard.bin", "/debris", "/passwd", "/empty-dir"] {
            var info = stat()
            #expect(lstat(model + gone, &info) != 0, "\(gone) is still in the cache")
        }
        #expect(!FileManager.default.fileExists(atPath: setup.cache + "/model.staging/gone.bin"))
        #expect(second.stderr.contains("removed passwd from the cache"))
    }

    /// gocryptfs cannot see a whole ciphertext file swapped with another: the manifest can, on the next fetch and
    /// before every mount, by each file's stamp and, where that changed, its CRC-64 read again from disk.
    @Test func filesSwappedAfterVerificationAreCaughtByTheNextFetchAndBeforeTheMount() async throws {
        let setup = try await Setup()
        defer { setup.dir.remove() }
        #expect(try setup.fetch().status == 0)
        let model = setup.cache + "/model/shards/"
        func swap(_ a: String, _ b: String) {
            #expect(rename(model + a, model + "swap") == 0 && rename(model + b, model + a) == 0 && rename(model + "swap", model + b) == 0)
        }
        let fetcher = try fetcher(setup)
        #expect(try fetcher.verifyCache() == 0)

        // Same sizes, different contents: only the manifest's CRC-64 tells them apart.
        swap("s10", "s11")
        let second = try setup.fetch()
        #expect(second.status == 0, "\(second.stderr.suffix(1000))")
        #expect(second.stderr.contains("qwen/shards/s10: the cached file changed after it was verified"))
        #expect(second.stdout.contains("154 already verified"), "\(second.stdout)")
        try setup.expectIdentical()
        // A touched file whose bytes are unchanged is read again once, not downloaded.
        #expect(utimes(model + "s12", nil) == 0)
        #expect(try fetcher.verifyCache() == 1)

        // Before the mount: a swap is refused by name and the files are removed for the fetch to bring back.
        swap("s20", "s21")
        let refusal = #expect(throws: FetchError.self) { try fetcher.verifyCache() }
        #expect(refusal.map { "\($0)" }?.contains("qwen/shards/s20 (its bytes changed after they were verified)") == true, "\(String(describing: refusal))")
        #expect(!FileManager.default.fileExists(atPath: model + "s20") && !FileManager.default.fileExists(atPath: model + "s21"))
        #expect(try setup.fetch().status == 0)
        try setup.expectIdentical()
        #expect(try fetcher.verifyCache() == 0)
    }

    /// A body that stops halfway with the connection left open (a NAT drop: no FIN, no RST) is cut by the read
    /// timeout, and the part is fetched again.
    @Test func aBodyThatStallsMidPartIsRetriedAndTheFetchCompletes() async throws {
        let setup = try await Setup()
        defer { setup.dir.remove() }
        try setup.server.setFaults(#"{"stall": 2, "stall_seconds": 60}"#)
        let started = ContinuousClock.now
        let result = try setup.fetch(environment: ["CAID_READ_TIMEOUT": "2"])
        #expect(result.status == 0, "\(result.stderr.suffix(1500))")
        #expect(ContinuousClock.now - started < .seconds(45))
        try setup.expectIdentical()
    }

    /// A listed size near 2^63 (which would trap in `off_t`) and a key that cannot be stored are named and left out;
    /// the rest of the model is fetched, and nothing crashes.
    @Test func anAbsurdSizeIsRefusedByNameAndTheRestIsFetched() async throws {
        let setup = try await Setup()
        defer { setup.dir.remove() }
        try setup.server.setFaults(#"{"absurd_size": {"qwen/shards/s3": 9223372036854775000, "qwen/shards/s4": 18446744073709551615}}"#)
        let result = try setup.fetch()
        #expect(result.status == 1, "\(result.stderr.suffix(1500))")
        #expect(result.stderr.contains("not fetched: 'qwen/shards/s3': its listed size 9223372036854775000 is beyond"), "\(result.stderr.suffix(1500))")
        #expect(result.stderr.contains("'qwen/shards/s4'"))
        #expect(result.stderr.contains("2 listed objects were not fetched"))
        #expect(result.stdout.contains("all 154 verified"), "\(result.stdout)")
        #expect(!FileManager.default.fileExists(atPath: setup.cache + "/model/shards/s3"))
        #expect(FileManager.default.fileExists(atPath: setup.cache + "/model/shards/s5"))
    }

    @Test func anEndlessOrLoopingListingEndsWithAClearError() async throws {
        let setup = try await Setup(pageSize: 20)
        defer { setup.dir.remove() }
        try setup.server.setFaults(#"{"endless_listing": "same"}"#)
        let looping = try setup.fetch()
        #expect(looping.status == 1)
        #expect(looping.stderr.contains("a second time: the server is looping"), "\(looping.stderr.suffix(1000))")

        try setup.server.setFaults(#"{"endless_listing": true}"#)
        var limits = OSSClient.ListingLimits()
        limits.pages = 40
        let endless = await #expect(throws: FetchError.self) { _ = try await self.fetcher(setup, limits: limits).run() }
        #expect(endless.map { "\($0)" }?.contains("goes on past 156 objects in 40 pages") == true, "\(String(describing: endless))")
        #expect(endless?.isPermanent == true)
    }

    @Test func goesThroughTheConfiguredProxy() async throws {
        let setup = try await Setup()
        defer { setup.dir.remove() }
        // A CONNECT proxy that tunnels everything to the test server, and an endpoint nothing listens on: only a
        // download through the proxy can succeed.
        let proxy = try Programs.start("/usr/bin/env", [
            "python3", Programs.packageRoot + "/Tests/peers/connect_proxy.py", "--redirect", "127.0.0.1:\(setup.server.port)",
        ])
        defer { proxy.signal(SIGTERM) }
        let proxyPort = try await FileEvents.line(of: proxy, what: "connect_proxy.py listening") { line in
            line.hasPrefix("listening ") ? Int(line.dropFirst("listening ".count)) : nil
        }
        let env = try setup.dir.write("proxied.env", try String(contentsOfFile: setup.env, encoding: .utf8)
            .replacingOccurrences(of: "MODEL_OSS_ENDPOINT=\"http://127.0.0.1:\(setup.server.port)\"", with: "MODEL_OSS_ENDPOINT=\"http://127.0.0.1:9\""))
        let proxied = try Programs.run(Programs.caid, ["fetch", "--env", env], environment: Programs.environment(["CAID_OSS_PROXY": "127.0.0.1:\(proxyPort)"]))
        #expect(proxied.status == 0, "\(proxied.stderr.suffix(1000))")
        try setup.expectIdentical()
    }

    @Test func anObjectThatChangesDuringTheDownloadIsFetchedAgain() async throws {
        let setup = try await Setup()
        defer { setup.dir.remove() }
        // After 5 object GETs every ETag changes: the parts in flight get 412 and the object is listed and fetched anew.
        try setup.server.setFaults(#"{"etag_change_after_gets": 5}"#)
        let result = try setup.fetch(["--concurrency", "2"])
        #expect(result.status == 0, "\(result.stderr.suffix(1000))")
        try setup.expectIdentical()
        let manifest = try String(contentsOfFile: setup.cache + "/model.manifest.json", encoding: .utf8)
        #expect(manifest.contains("-v2"))
    }
}
