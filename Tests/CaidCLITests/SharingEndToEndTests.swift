import CaidControl
import CaidCore
import CaidTestSupport
import Foundation
import Testing

/// Model sharing for real: three hosts in network namespaces on one bridge, the test OSS server and KBS/AS beside
/// them. The first host downloads from OSS, the others from their peers; a peer whose cache was altered is caught by
/// OSS's CRC-64, avoided, and the download still completes from OSS.
@Suite(.serialized) struct SharingEndToEndTests {
    @Test func threeHostsShareTheCiphertext() async throws {
        let network = try NamespaceNetwork(hosts: 3)
        defer { network.remove() }
        let host = try await ModelHost(namespace: network.infra, serverAddress: network.infraAddress, gateway: "off")
        defer { host.remove() }
        let a = network.addresses
        // The ciphertext, and the model manifest beside it that every host downloads once (it is not shared).
        let modelBytes = try Self.treeSize(host.dir.path + "/bucket/qwen")
        let manifestBytes = (try FileManager.default.attributesOfItem(atPath: host.dir.path + "/bucket/qwen.caid-manifest.json")[.size] as? Int) ?? 0

        // One notification socket per host (pathname sockets reach across network namespaces): READY=1 says ready.
        let notify = try (1...3).map { try NotifySocket(path: host.dir.path + "/notify-h\($0).sock") }
        func start(_ index: Int, peers: [String]) throws -> (Programs.Running, (env: String, mountpoint: String, socket: String, cache: String)) {
            let paths = try host.hostEnvironment("h\(index + 1)", extraSettings: "MODEL_SHARING_PEER=\"\(peers.joined(separator: " "))\"")
            let environment = Programs.environment(["NOTIFY_SOCKET": notify[index].path])
            return (try network.start(in: network.hosts[index], Programs.caid, ["run", "--env", paths.env], environment: environment), paths)
        }
        func waitReady(_ index: Int, _ process: Programs.Running, _ socket: String) async throws -> String {
            let ready = try? await process.until("host \(index + 1) ready", timeout: .seconds(60), notify: notify[index]) { messages, exited -> Bool? in
                messages.contains { $0.hasPrefix("READY=1") } ? true : exited.map { _ in false }
            }
            if let exited = process.exited() { Issue.record("host \(index + 1) exited: \(exited.stderr)"); return "" }
            guard ready == true else { Issue.record("host \(index + 1) not ready: \(process.stderr)"); return "" }
            return try network.run(in: network.hosts[index], Programs.caid, ["health", "--socket", socket]).stdout
        }
        func sameAsPlain(_ mountpoint: String) -> Bool {
            ["model.safetensors", "config.json", "tokenizer.json"].allSatisfy { name in
                let mounted = FileManager.default.contents(atPath: mountpoint + "/" + name)
                return mounted != nil && mounted == FileManager.default.contents(atPath: host.plain + "/" + name)
            }
        }

        // Host 1 first: its peers are not up yet, so it takes everything from OSS.
        let (first, p1) = try start(0, peers: [a[1], a[2]])
        defer { first.signal(SIGKILL); _ = first.wait() }
        _ = try await waitReady(0, first, p1.socket)
        let afterFirst = try host.ossServedBytes()
        #expect(afterFirst >= modelBytes + manifestBytes)

        // Host 2 takes it from host 1 (host 3 is not up and is avoided for a while).
        let (second, p2) = try start(1, peers: [a[0], a[2]])
        defer { second.signal(SIGKILL); _ = second.wait() }
        let health2 = try await waitReady(1, second, p2.socket)
        #expect(health2.contains("sharing"))
        let afterSecond = try host.ossServedBytes()
        #expect(afterSecond - afterFirst - manifestBytes < modelBytes / 4, "host 2 took \(afterSecond - afterFirst) bytes from OSS")
        #expect(sameAsPlain(p1.mountpoint))
        #expect(sameAsPlain(p2.mountpoint))

        // Host 2's cache is altered behind its back (disk damage or a dishonest host): its manifest still lists it.
        let victim = try #require(Self.largestFile(p2.cache))
        let handle = try #require(FileHandle(forUpdatingAtPath: victim))
        try handle.seek(toOffset: 100)
        handle.write(Data(repeating: 0xEE, count: 64))
        try handle.close()

        // Host 3 asks only host 2: the bad object fails OSS's CRC-64, host 2 is avoided, OSS supplies that object.
        let (third, p3) = try start(2, peers: [a[1]])
        defer { third.signal(SIGKILL); _ = third.wait() }
        _ = try await waitReady(2, third, p3.socket)
        #expect(sameAsPlain(p3.mountpoint))
        // The sharing detail is refreshed twice a second; each change reaches the watch.
        let watch = try HealthWatch(socket: p3.socket)
        let sharing = try? await watch.until("host 3 naming the peer it avoided", timeout: .seconds(10)) { snapshot -> String? in
            let detail = snapshot.services.first { $0.name == "sharing" }?.detail ?? ""
            return detail.contains("avoided") ? detail : nil
        }
        #expect(sharing?.contains("did not verify") == true, "\(watch.latest.map(\.summary) ?? "no health") \(String(describing: sharing))")
        let total = try host.ossServedBytes()
        #expect(total - 3 * manifestBytes < 2 * modelBytes, "OSS served \(total) bytes for a \(modelBytes)-byte model")

        for (index, process) in [first, second, third].enumerated() {
            process.signal(SIGTERM)
            let result = await process.wait(timeout: .seconds(15))
            #expect(result?.status == 0, "host \(index + 1): \(result?.stderr ?? "killed")")
        }
    }

    static func treeSize(_ path: String) throws -> Int {
        let files = FileManager.default.enumerator(atPath: path)?.allObjects as? [String] ?? []
        return try files.reduce(0) { total, file in
            let attributes = try FileManager.default.attributesOfItem(atPath: path + "/" + file)
            return total + ((attributes[.type] as? FileAttributeType) == .typeRegular ? (attributes[.size] as? Int ?? 0) : 0)
        }
    }

    static func largestFile(_ path: String) -> String? {
        let files = FileManager.default.enumerator(atPath: path)?.allObjects as? [String] ?? []
        func size(_ file: String) -> Int { ((try? FileManager.default.attributesOfItem(atPath: file))?[.size] as? Int) ?? 0 }
        return files.map { path + "/" + $0 }.max { size($0) < size($1) }
    }
}
