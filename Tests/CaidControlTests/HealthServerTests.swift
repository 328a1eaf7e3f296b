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

    /// Starts a blocking watch on a thread of its own: each line, decoded, goes to `lines`; how it ended to `ended`.
    static func watch(
        _ path: String, lines: AsyncStream<HealthSnapshot>.Continuation? = nil,
        ended: AsyncStream<Result<Int?, HealthClient.Unreachable>>.Continuation
    ) {
        Thread {
            let outcome = Result { () throws(HealthClient.Unreachable) in
                try HealthClient(socketPath: path).watch { bytes in
                    if let snapshot = try? HealthRoutes.decode(Data(bytes)) { lines?.yield(snapshot) }
                    return true
                }
            }
            lines?.finish()
            ended.yield(outcome)
        }.start()
    }

    @Test func aWatchGetsTheSnapshotThenEveryChangeAndEndsWithTheServer() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.path + "/caid.sock"
        let registry = HealthRegistry()
        await registry.register("mount", required: true)
        let (lines, line) = AsyncStream.makeStream(of: HealthSnapshot.self)
        let (endings, ended) = AsyncStream.makeStream(of: Result<Int?, HealthClient.Unreachable>.self)
        try await withServer(at: path, registry: registry) {
            Self.watch(path, lines: line, ended: ended)
            var iterator = lines.makeAsyncIterator()
            let first = await iterator.next()
            #expect(first?.ready == false)
            await registry.set("mount", .running, detail: "at /models")
            let second = await iterator.next()
            #expect(second?.ready == true)
            #expect(second?.services.first?.detail == "at /models")
            // Seven more fill the slots (each has its first line once it holds one); the ninth is turned away.
            for _ in 0..<HealthWatchers.limit - 1 {
                let (other, otherLine) = AsyncStream.makeStream(of: HealthSnapshot.self)
                Self.watch(path, lines: otherLine, ended: ended)
                _ = await other.first { _ in true }
            }
            let (refusals, refused) = AsyncStream.makeStream(of: Result<Int?, HealthClient.Unreachable>.self)
            Self.watch(path, ended: refused)
            let refusal = try await refusals.first { _ in true }?.get()
            #expect(refusal == 503)
        }
        // The server stopped: all eight watches saw the stream close, none an error.
        var closed = 0
        for await ending in endings {
            let status = try ending.get()
            #expect(status == nil)
            closed += 1
            if closed == HealthWatchers.limit { break }
        }
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
