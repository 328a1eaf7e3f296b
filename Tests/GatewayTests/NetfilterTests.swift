import CaidCore
import CaidTestSupport
import Foundation
import Testing

/// `netfilter` mode for real: `caid gateway` in a server namespace with its nat rules, the independent TNG client in
/// a client namespace dialling `<server>:8080`, the stand-in service on :8080 behind it.
@Suite(.serialized) struct NetfilterTests {
    @Test func clientsReachTheServicePortOnlyThroughTheTunnel() async throws {
        let dir = try TemporaryDirectory("caid-netfilter")
        defer { dir.remove() }
        let namespaces = try NamespacePair()
        defer { namespaces.remove() }
        let page = "served behind the gateway\n"
        try FileManager.default.createDirectory(atPath: dir.path + "/www", withIntermediateDirectories: true)
        try Data(page.utf8).write(to: URL(fileURLWithPath: dir.path + "/www/index.html"))

        let python = "/usr/bin/env"
        let service = try namespaces.start(in: namespaces.server, python, [
            "python3", Programs.packageRoot + "/Tests/peers/static_server.py", "--root", dir.path + "/www", "--host", "0.0.0.0",
            "--port", "8080", "--port-file", dir.path + "/service.port",
        ])
        defer { service.signal(SIGKILL); _ = service.wait() }
        let trustee = try namespaces.start(in: namespaces.server, python, [
            "python3", Programs.packageRoot + "/Tests/peers/trustee_server.py", "--host", "0.0.0.0", "--prefix", "/trustee/",
            "--port-file", dir.path + "/as.port",
        ])
        defer { trustee.signal(SIGKILL); _ = trustee.wait() }
        for file in ["service.port", "as.port"] {
            for _ in 0..<500 where !FileManager.default.fileExists(atPath: dir.path + "/" + file) {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        let asPort = try #require(Int(try String(contentsOfFile: dir.path + "/as.port", encoding: .utf8)))
        let env = try dir.write("cai.env", """
            TRUSTEE_URL="http://\(namespaces.serverAddress):\(asPort)/trustee/"
            MODEL_KEY_ID="kbs:///default/aliyun/model-decryption-key"
            MODEL_OSS_BUCKET_PATH="models:/qwen"
            MODEL_OSS_ENDPOINT="http://127.0.0.1:1"
            MODEL_OSS_ACCESS_KEY_ID="LTAItest"
            MODEL_OSS_SECRET_ACCESS_KEY="oss-secret"
            MODEL_SERVICE_PORT=8080
            CAID_ATTESTER=sample
            CAID_GATEWAY_MODE=netfilter
            CAID_GATEWAY_PORT=41001
            """)
        let caid = try namespaces.start(in: namespaces.server, Programs.caid, ["gateway", "--env", env])
        defer { caid.signal(SIGKILL); _ = caid.wait() }
        var installed = false
        for _ in 0..<250 {
            let rules = try namespaces.run(in: namespaces.server, "/usr/sbin/iptables", ["-t", "nat", "-S", "CAID_GATEWAY"])
            if rules.status == 0, rules.stdout.contains("REDIRECT") { installed = true; break }
            if let exited = caid.exited() { Issue.record("caid gateway exited: \(exited.stderr)"); return }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(installed)
        try await Task.sleep(for: .milliseconds(300))

        // Through the tunnel: attested, then the page.
        let client = try namespaces.run(in: namespaces.client, python, [
            "python3", Programs.packageRoot + "/Tests/peers/tng_client.py", "--host", namespaces.serverAddress, "--port", "8080",
            "--as-addr", "http://\(namespaces.serverAddress):\(asPort)/trustee/as/", "--path", "/index.html", "--streams", "3",
        ])
        #expect(client.status == 0, "\(client.stdout) \(client.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(client.stdout.utf8)) as? [String: Any])
        let streams = report["streams"] as? [[String: Any]] ?? []
        #expect(streams.count == 3)
        #expect(streams.allSatisfy { ($0["body"] as? String)?.hasSuffix(page) == true })

        // In the clear, from the other host: the nat rule sends it to the TLS gateway, which will not serve it.
        let plain = try namespaces.run(in: namespaces.client, python, [
            "python3", "-c", """
            import socket
            s = socket.create_connection(("\(namespaces.serverAddress)", 8080), timeout=5)
            s.sendall(b"GET /index.html HTTP/1.0\\r\\n\\r\\n")
            data = b""
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk: break
                    data += chunk
            except Exception:
                pass
            print("SERVED" if b"served behind the gateway" in data else "REFUSED")
            """,
        ])
        #expect(plain.stdout.contains("REFUSED"), "\(plain.stdout) \(plain.stderr)")

        // On the server itself the service is still there, unredirected (vLLM's own health checks keep working).
        let local = try namespaces.run(in: namespaces.server, python, [
            "python3", "-c", "import urllib.request; print(urllib.request.urlopen('http://\(namespaces.serverAddress):8080/index.html', timeout=5).read().decode())",
        ])
        #expect(local.stdout == page + "\n", "\(local.stderr)")

        // A clean stop removes the rules.
        caid.signal(SIGTERM)
        let stopped = await caid.wait(timeout: .seconds(10))
        #expect(stopped?.status == 0, "\(stopped?.stderr ?? "still running")")
        let after = try namespaces.run(in: namespaces.server, "/usr/sbin/iptables", ["-t", "nat", "-S"])
        #expect(!after.stdout.contains("CAID_GATEWAY"), "\(after.stdout)")
    }
}
