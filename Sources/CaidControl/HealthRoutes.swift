import CaidCore
import Foundation

/// The health API's answers, decided from a snapshot alone (no I/O), so they are testable without a socket.
public enum HealthRoutes {
    /// One HTTP response.
    public struct Response: Sendable, Equatable {
        public var status: Int
        public var contentType: String
        public var body: [UInt8]
    }

    /// Answers one request.
    /// - Parameters:
    ///   - metrics: renders the Prometheus text; only called for `/metrics`.
    public static func respond(
        method: String, path: String, snapshot: HealthSnapshot, metrics: () -> [UInt8]
    ) -> Response {
        let route = path.split(separator: "?", maxSplits: 1).first.map(String.init) ?? path
        guard ["/healthz", "/readyz", "/status", "/metrics"].contains(route) else {
            return text(404, "not found: try /healthz, /readyz, /status or /metrics\n")
        }
        guard method == "GET" || method == "HEAD" else { return text(405, "only GET is allowed\n") }
        switch route {
        case "/healthz":
            return text(200, "alive\n")
        case "/readyz":
            // `?local`: ready and the whole model on disk, for an orchestrator that would rather wait for the
            // download than have the model loader's reads wait for it.
            let wantsLocal = flag("local", in: path)
            guard snapshot.ready else { return text(503, "not ready: \(snapshot.summary)\n") }
            if wantsLocal, !snapshot.modelLocal { return text(503, "ready, but the model is still arriving: \(snapshot.summary)\n") }
            return text(200, snapshot.modelLocal ? "ready\n" : "ready (the model is still arriving; /readyz?local waits for all of it)\n")
        case "/status":
            return Response(status: 200, contentType: "application/json", body: Array(encode(snapshot)))
        default:
            return Response(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: metrics())
        }
    }

    /// Whether a request asks to watch: `GET /status?watch` answers with the current snapshot, then one more after
    /// every change, each as one line of JSON (NDJSON), until the client closes. `caid health --watch` reads it.
    public static func watches(method: String, path: String) -> Bool {
        method == "GET" && path.split(separator: "?", maxSplits: 1).first == "/status" && flag("watch", in: path)
    }

    /// One line of the watch stream: the `/status` JSON on a single line, newline-terminated.
    public static func encodeLine(_ snapshot: HealthSnapshot) -> [UInt8] {
        Array(encode(snapshot, pretty: false)) + [UInt8(ascii: "\n")]
    }

    /// The answer to a watch over the limit of concurrent watchers.
    public static let tooManyWatchers = text(503, "too many watchers: at most \(HealthWatchers.limit) at once\n")

    /// The `/status` JSON: sorted keys and ISO 8601 dates, so it reads the same every time.
    public static func encode(_ snapshot: HealthSnapshot, pretty: Bool = true) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        return (try? encoder.encode(snapshot)) ?? Data("{}".utf8)
    }

    /// Decodes what ``encode(_:)`` wrote.
    public static func decode(_ data: Data) throws -> HealthSnapshot {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(HealthSnapshot.self, from: data)
    }

    /// Whether the query of `path` holds `name` as a flag (`name` or `name=1`).
    private static func flag(_ name: String, in path: String) -> Bool {
        guard let query = path.split(separator: "?", maxSplits: 1).dropFirst().first else { return false }
        return query.split(separator: "&").contains { $0 == name || $0 == "\(name)=1" }
    }

    private static func text(_ status: Int, _ body: String) -> Response {
        Response(status: status, contentType: "text/plain; charset=utf-8", body: Array(body.utf8))
    }
}
