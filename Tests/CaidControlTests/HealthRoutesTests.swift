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

    /// With a streaming mount, `/readyz` is 200 once the model can be read, and `/readyz?local` only once every byte
    /// is on disk and verified; `/status` carries the figures.
    @Test func readyAndLocalAreTwoFacts() throws {
        var cachefs = ServiceStatus(name: "cachefs", required: true, state: .running)
        cachefs.streaming = StreamingStatus(localBytes: 412 << 20, totalBytes: 1024 << 20, waitingReads: 2, refetching: [], arriving: 3)
        var snapshot = HealthSnapshot(state: "ready", ready: true, services: [cachefs], summary: "ready")
        let respond = { (path: String) in HealthRoutes.respond(method: "GET", path: path, snapshot: snapshot) { [] } }
        #expect(!snapshot.modelLocal)
        #expect(respond("/readyz").status == 200)
        #expect(String(decoding: respond("/readyz").body, as: UTF8.self).contains("still arriving"))
        #expect(respond("/readyz?local").status == 503)
        #expect(respond("/readyz?local=1").status == 503)
        let status = try HealthRoutes.decode(Data(respond("/status").body))
        #expect(status.services.first?.streaming?.waitingReads == 2)
        #expect(cachefs.streaming?.summary == "streaming: 412 MiB of 1024 MiB local, 2 reads waiting")

        // Every byte local, one object's check still to come: not yet.
        cachefs.streaming = StreamingStatus(localBytes: 1024 << 20, totalBytes: 1024 << 20, waitingReads: 0, refetching: [], arriving: 1)
        snapshot.services = [cachefs]
        #expect(!snapshot.modelLocal)
        cachefs.streaming?.arriving = 0
        snapshot.services = [cachefs]
        #expect(snapshot.modelLocal)
        #expect(respond("/readyz?local").status == 200)
        // An object fetched again after a failed check is not local yet.
        cachefs.streaming?.refetching = ["m/shard"]
        snapshot.services = [cachefs]
        #expect(respond("/readyz?local").status == 503)
        snapshot.ready = false
        #expect(respond("/readyz").status == 503)
    }

    @Test func onlyAGetOfStatusWithWatchIsAWatch() {
        #expect(HealthRoutes.watches(method: "GET", path: "/status?watch"))
        #expect(HealthRoutes.watches(method: "GET", path: "/status?pretty&watch=1"))
        #expect(!HealthRoutes.watches(method: "GET", path: "/status"))
        #expect(!HealthRoutes.watches(method: "HEAD", path: "/status?watch"))
        #expect(!HealthRoutes.watches(method: "GET", path: "/readyz?watch"))
        #expect(!HealthRoutes.watches(method: "GET", path: "/status?watcher"))
    }

    @Test func aWatchLineIsTheStatusOnOneLine() throws {
        let snapshot = HealthSnapshot(state: "ready", ready: true, services: [], summary: "ready: no services")
        let line = HealthRoutes.encodeLine(snapshot)
        #expect(line.last == UInt8(ascii: "\n"))
        #expect(line.dropLast().contains(UInt8(ascii: "\n")) == false)
        #expect(try HealthRoutes.decode(Data(line)) == snapshot)
    }
}
