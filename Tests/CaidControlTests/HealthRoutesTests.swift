import CaidControl
import CaidCore
import Foundation
import Testing

@Suite struct HealthRoutesTests {
    func snapshot(ready: Bool) -> HealthSnapshot {
        var fetch = ServiceStatus(name: "fetch", required: true, state: ready ? .running : .backoff)
        fetch.lastError = "OSS answered 503"
        fetch.restarts = 2
        return HealthSnapshot(
            state: ready ? "ready" : "starting", ready: ready, services: [fetch],
            summary: ready ? "ready: fetch running" : "starting: fetch backoff")
    }

    func respond(_ method: String, _ path: String, ready: Bool = true) -> HealthRoutes.Response {
        HealthRoutes.respond(method: method, path: path, snapshot: snapshot(ready: ready)) { Array("metrics\n".utf8) }
    }

    @Test func routes() throws {
        #expect(respond("GET", "/healthz", ready: false).status == 200)
        #expect(respond("GET", "/readyz").status == 200)
        let notReady = respond("GET", "/readyz", ready: false)
        #expect(notReady.status == 503)
        #expect(String(decoding: notReady.body, as: UTF8.self) == "not ready: starting: fetch backoff\n")
        #expect(respond("GET", "/metrics").body == Array("metrics\n".utf8))
        #expect(respond("GET", "/nope").status == 404)
        #expect(respond("POST", "/status").status == 405)
        #expect(respond("GET", "/readyz?verbose=1").status == 200)

        let status = respond("GET", "/status", ready: false)
        #expect(status.contentType == "application/json")
        let decoded = try HealthRoutes.decode(Data(status.body))
        #expect(decoded.services.first?.lastError == "OSS answered 503")
        #expect(decoded.services.first?.restarts == 2)
        #expect(decoded.state == "starting" && !decoded.ready)
    }
}
