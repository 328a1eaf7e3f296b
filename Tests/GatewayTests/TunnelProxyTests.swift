import Attestation
import CaidTestSupport
import Crypto
import Foundation
import Gateway
import NIOHTTP1
import RATLS
import Testing

/// `caid tunnel` as TNG's `http_proxy` behaves: the `caid` executable as the proxy, caid's gateway in mapping mode
/// in front of an HTTP/1.1 keep-alive service (Tests/peers/echo_server.py), the test Attestation Service.
@Suite(.serialized) struct TunnelProxyTests {
    final class Setup: @unchecked Sendable {
        let dir: TemporaryDirectory
        let service: PeerProcess
        let trustee: TrusteePeer
        let server: GatewayServer
        let port: Int
        let tunnel: TunnelTests.Tunnel
        let events: String
        /// The service's events as they happen (echo_server.py `--notify`).
        let notify: NotifySocket

        init(dstFilters: (Int) -> [String] = { _ in [] }) async throws {
            dir = try TemporaryDirectory("caid-proxy")
            events = dir.path + "/events"
            notify = try NotifySocket(path: dir.path + "/events.sock")
            service = try await PeerProcess("echo_server.py", ["--port", String(Programs.unusedPort()), "--events", events, "--notify", notify.path], directory: dir.path)
            trustee = try await TrusteePeer(dialect: "current", resources: [:], directory: dir.path, options: ["--as-policy", "model-serving"])
            var configuration = GatewayConfiguration(mode: .mapping, listenPort: UInt16(Programs.unusedPort()), servicePort: UInt16(service.port))
            configuration.listenHost = "127.0.0.1"
            server = try GatewayServer(configuration: configuration, certificate: try AttestedCertificate.make(attester: SampleAttester()), logger: quietLogger)
            port = try await server.start()
            tunnel = try await TunnelTests.Tunnel(asAddress: trustee.url + "as/", extra: dstFilters(port).flatMap { ["--dst-filter", $0] })
        }

        var authority: String { "127.0.0.1:\(port)" }

        /// Requests over one connection to the proxy (Tests/peers/proxy_client.py `requests`).
        func requests(_ plan: [[String: Any]]) throws -> [[String: Any]] {
            let json = String(decoding: try JSONSerialization.data(withJSONObject: plan), as: UTF8.self)
            let result = try client(["requests", "--plan", json])
            try #require(result.status == 0, "\(result.stderr)")
            return try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]])
        }

        func client(_ arguments: [String]) throws -> Programs.Result {
            try Programs.run("/usr/bin/env", ["python3", Programs.packageRoot + "/Tests/peers/proxy_client.py"] + arguments + ["--proxy", String(tunnel.port)])
        }

        func finish() async {
            await server.stop()
            dir.remove()
        }
    }

    @Test func postWhoseBodyArrivesWithTheHead() async throws {
        let setup = try await Setup()
        defer { Task { await setup.finish() } }
        // http.client sends a bytes body in the same write as the head.
        let responses = try setup.requests([["method": "POST", "url": "http://\(setup.authority)/upload", "body_size": 11]])
        #expect(responses.first?["status"] as? Int == 200)
        let body = (responses.first?["body"] as? String) ?? ""
        #expect(body.hasPrefix("11 "), "\(body)")
        #expect(body.contains("forwarded=true"))
        #expect(body.contains("path=/upload"))
        // The same in one raw write, with the next request pipelined behind it.
        let raw = try setup.client(["raw", "--timeout", "5", "--data",
            "POST http://\(setup.authority)/a HTTP/1.1\\r\\nHost: \(setup.authority)\\r\\nContent-Length: 5\\r\\n\\r\\nhello"
            + "GET http://\(setup.authority)/b HTTP/1.1\\r\\nHost: \(setup.authority)\\r\\nConnection: close\\r\\n\\r\\n"])
        #expect(raw.stdout.contains("5 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"), "\(raw.stdout)")
        #expect(raw.stdout.contains("path=/b"), "\(raw.stdout)")
    }

    @Test func tenMiBPost() async throws {
        let setup = try await Setup()
        defer { Task { await setup.finish() } }
        let size = 10 << 20
        let responses = try setup.requests([["method": "POST", "url": "http://\(setup.authority)/big", "body_size": size]])
        let expected = SHA256Hex.of(Data(repeating: UInt8(ascii: "x"), count: size))
        #expect(responses.first?["body"] as? String == "\(size) \(expected) forwarded=true path=/big\n")
    }

    @Test func severalRequestsOnOneKeptAliveConnection() async throws {
        let setup = try await Setup()
        defer { Task { await setup.finish() } }
        let plan: [[String: Any]] = (0..<5).map { ["url": "http://\(setup.authority)/r\($0)"] }
            + [["method": "POST", "url": "http://\(setup.authority)/p", "body_size": 1000]]
            + [["url": "http://\(setup.authority)/stream?chunks=20"]]
        let responses = try setup.requests(plan)
        #expect(responses.count == 7)
        #expect(responses.allSatisfy { $0["status"] as? Int == 200 })
        for (index, response) in responses.prefix(5).enumerated() {
            #expect(response["body"] as? String == "path=/r\(index) forwarded=true\n")
        }
        // One downstream connection for all of them, never told to close.
        let ports = Set(responses.compactMap { $0["local_port"] as? Int })
        #expect(ports.count == 1, "\(responses)")
        #expect(responses.allSatisfy { ($0["headers"] as? [String: String])?["connection"] != "close" })
        let streamed = (responses.last?["body"] as? String) ?? ""
        #expect(streamed.components(separatedBy: "data: ").count == 21)
    }

    @Test func destinationComesFromTheHostHeader() async throws {
        let setup = try await Setup()
        defer { Task { await setup.finish() } }
        // TNG takes the destination of a non-CONNECT request from Host, not from the absolute URI.
        let responses = try setup.requests([["url": "http://unused.invalid:1/h", "host": setup.authority]])
        #expect(responses.first?["body"] as? String == "path=/h forwarded=true\n")
    }

    @Test func recursionIsAnswered400() async throws {
        let setup = try await Setup()
        defer { Task { await setup.finish() } }
        let responses = try setup.requests([["url": "http://\(setup.authority)/loop", "headers": ["X-Tng-Http-Forward": "true"]]])
        #expect(responses.first?["status"] as? Int == 400)
        let body = (responses.first?["body"] as? String) ?? ""
        #expect(body.contains("recursion is detected"), "\(body)")
    }

    @Test func destinationOutsideTheListIsRefused() async throws {
        let setup = try await Setup(dstFilters: { port in ["127.0.0.2:\(port)", "*.example.com:\(port)"] })
        defer { Task { await setup.finish() } }
        let responses = try setup.requests([["url": "http://\(setup.authority)/secret"]])
        #expect(responses.first?["status"] as? Int == 403)
        let body = (responses.first?["body"] as? String) ?? ""
        #expect(body.contains("not in the destinations to tunnel"), "\(body)")
        let connect = try setup.client(["raw", "--timeout", "5", "--data", "CONNECT \(setup.authority) HTTP/1.1\\r\\nHost: \(setup.authority)\\r\\n\\r\\n"])
        #expect(connect.stdout.hasPrefix("HTTP/1.1 403"), "\(connect.stdout)")
        // Nothing reached the service, protected or not.
        #expect(!FileManager.default.fileExists(atPath: setup.events))
        let attestations = setup.trustee.requests().filter { $0["as"] != nil }.count
        #expect(attestations == 0)
    }

    @Test func connectCarriesBytesThatCameWithTheHead() async throws {
        let setup = try await Setup()
        defer { Task { await setup.finish() } }
        let raw = try setup.client(["raw", "--data",
            "CONNECT \(setup.authority) HTTP/1.1\\r\\nHost: \(setup.authority)\\r\\n\\r\\n"
            + "GET /early HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n"])
        #expect(raw.stdout.hasPrefix("HTTP/1.1 200 Connection Established\r\n\r\nHTTP/1.1 200"), "\(raw.stdout)")
        #expect(raw.stdout.contains("\r\n\r\npath=/early forwarded=\n"), "\(raw.stdout)")
    }

    @Test func cancelledStreamFreesTheServiceSocketAtOnce() async throws {
        let setup = try await Setup()
        defer { Task { await setup.finish() } }
        let cancelled = try setup.client(["cancel", "--connect", setup.authority, "--path", "/hold"])
        try #require(cancelled.status == 0, "\(cancelled.stderr)")
        // The service keeps writing until its socket goes: that must be well under a second after the client left.
        var events: [String] = []
        setup.notify.receive(into: &events, timeout: .seconds(1)) { $0.contains("closed") }
        #expect(events == ["opened", "closed"])
    }

    @Test func routesFromTheHeadAlone() throws {
        func head(_ method: HTTPMethod, _ uri: String, _ headers: [(String, String)] = []) -> HTTPRequestHead {
            HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: HTTPHeaders(headers))
        }
        let none = DestinationFilter()
        let connect = try ProxyRoute.make(head(.CONNECT, "10.0.0.5:8080"), filter: none).get()
        #expect(connect.kind == .connect && connect.host == "10.0.0.5" && connect.port == 8080)
        let forward = try ProxyRoute.make(head(.GET, "http://a.invalid/x", [("Host", "srv:8080")]), filter: none).get()
        #expect(forward.kind == .forward && forward.host == "srv" && forward.port == 8080)
        #expect(try ProxyRoute.make(head(.GET, "http://[::1]/", [("Host", "[::1]")]), filter: none).get().port == 80)
        #expect(throws: ProxyRoute.Problem.self) { try ProxyRoute.make(head(.GET, "http://a/", []), filter: none).get() }
        #expect(throws: ProxyRoute.Problem.self) { try ProxyRoute.make(head(.CONNECT, "nohost:"), filter: none).get() }
        let recursion = ProxyRoute.make(head(.GET, "http://a/", [("Host", "a"), ("x-tng-http-forward", "true")]), filter: none)
        guard case .failure(let problem) = recursion else { Issue.record("recursion was routed"); return }
        #expect(problem.status == .badRequest && problem.message.hasPrefix("recursion is detected"))

        let filter = try DestinationFilter(parsing: ["api.example.com:8080", "*.models.internal:80", "gpu-*:9000", "10.0.0.7"])
        #expect(filter.allows(host: "api.example.com", port: 8080))
        #expect(!filter.allows(host: "api.example.com", port: 80))
        #expect(filter.allows(host: "a.models.internal", port: 80))
        #expect(filter.allows(host: "gpu-3", port: 9000))
        #expect(filter.allows(host: "10.0.0.7", port: 80))
        #expect(!filter.allows(host: "10.0.0.8", port: 80))
        #expect(throws: DestinationFilter.Invalid.self) { try DestinationFilter(parsing: ["a*b.com"]) }
        let refused = ProxyRoute.make(head(.GET, "/", [("Host", "evil.com:8080")]), filter: filter)
        #expect((try? refused.get()) == nil)

        let forwarded = ProxyRoute.forwardedHead(head(.POST, "http://srv:8080/v1/completions?stream=1",
            [("Host", "srv:8080"), ("Proxy-Connection", "keep-alive"), ("Connection", "keep-alive, x-hop"), ("X-Hop", "1"), ("Content-Length", "2")]))
        #expect(forwarded.uri == "/v1/completions?stream=1")
        #expect(forwarded.headers["X-Tng-Http-Forward"] == ["true"])
        #expect(forwarded.headers["Connection"] == ["close"])
        #expect(forwarded.headers["Content-Length"] == ["2"])
        let hopByHop = forwarded.headers.contains(name: "Proxy-Connection") || forwarded.headers.contains(name: "X-Hop")
        #expect(!hopByHop)
        #expect(ProxyRoute.forwardedHead(head(.GET, "http://srv")).uri == "/")
    }
}

enum SHA256Hex {
    static func of(_ data: Data) -> String {
        let digest = Crypto.SHA256.hash(data: data)
        return digest.map { String(format: "%02x", $0) }.joined()
    }
}
