import CaidControl
import CaidCore
import CaidTestSupport
import Foundation
import Logging
import ServiceLifecycle
import Testing

@Suite(.serialized, .timeLimit(.minutes(1))) struct HealthServerTests {
    let logger = quietLogger

    /// Runs a health server on `path` while `body` runs.
    func withServer(
        at path: String, registry: HealthRegistry, _ body: @Sendable () async throws -> Void
    ) async throws {
        let server = HealthServer(path: path, registry: registry, metrics: HealthMetrics(), logger: logger)
        try await withRunningServices([server]) {
            // The server marks itself running once the socket listens.
            for await snapshot in await registry.updates()
            where snapshot.services.contains(where: { $0.name == "health" && $0.state == .running }) { break }
            try await body()
        }
    }

    func mode(_ path: String) -> mode_t {
        var info = stat()
        stat(path, &info)
        return info.st_mode & 0o7777
    }

    @Test func servesEveryRouteOnASocketWithTheRightModes() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.path + "/run/caid/caid.sock"
        let registry = HealthRegistry()
        await registry.register("mount", required: true)
        try await withServer(at: path, registry: registry) {
            #expect(mode(dir.path + "/run/caid") == 0o750)
            #expect(mode(path) == 0o660)
            let client = HealthClient(socketPath: path)
            #expect(try client.get("/healthz").status == 200)
            #expect(try client.get("/readyz").status == 503)
            await registry.set("mount", .running)
            #expect(try client.get("/readyz").status == 200)
            let status = try HealthRoutes.decode(Data(client.get("/status").body))
            #expect(status.ready)
            #expect(status.services.map(\.name) == ["mount", "health"])
            let metrics = String(decoding: try client.get("/metrics").body, as: UTF8.self)
            #expect(metrics.contains("caid_ready 1"))
            #expect(metrics.contains(#"caid_service_state{service="mount",state="running"} 1"#))
            #expect(try client.get("/other").status == 404)
        }
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test func replacesAStaleSocket() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.path + "/caid.sock"
        // A socket file nobody listens on, as a killed caid leaves it.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        close(fd)
        #expect(bound == 0)
        try await withServer(at: path, registry: HealthRegistry()) {
            let answer = try HealthClient(socketPath: path).get("/healthz")
            #expect(answer.status == 200)
        }
    }

    @Test func refusesAFileThatIsNotASocketAndALiveSocket() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let file = try dir.write("not-a-socket", "keep me")
        let server = HealthServer(path: file, registry: HealthRegistry(), metrics: HealthMetrics(), logger: logger)
        await #expect { try await server.run() } throws: { "\($0)".contains("is not a socket") }
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "keep me")

        let live = dir.path + "/live.sock"
        try await withServer(at: live, registry: HealthRegistry()) {
            let second = HealthServer(path: live, registry: HealthRegistry(), metrics: HealthMetrics(), logger: logger)
            await #expect { try await second.run() } throws: { "\($0)".contains("already running") }
            let answer = try HealthClient(socketPath: live).get("/healthz")
            #expect(answer.status == 200)
        }
    }

    @Test func clientReportsUnreachableSockets() {
        #expect { try HealthClient(socketPath: "/nonexistent/caid.sock").get("/healthz") } throws: {
            "\($0)".contains("is caid running?")
        }
    }
}
