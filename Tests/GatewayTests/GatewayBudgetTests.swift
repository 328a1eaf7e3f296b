import Attestation
import CaidTestSupport
import Foundation
import Testing

@testable import Gateway

/// The limits a stranger meets at the gateway (issue #16 item 1): the pure ledger, the sizes derived from the
/// settings, and over real sockets with the independent TNG client (Tests/peers/tng_client.py, Python h2).
@Suite(.serialized) struct GatewayBudgetTests {
    @Test func theLedgerCapsConnectionsPerSourceAndInAllAndStreamsAcrossConnections() {
        var ledger = AdmissionLedger(maxConnections: 3, maxPerSource: 2, maxStreams: 2)
        #expect(ledger.admitConnection(from: "10.0.0.1") == nil)
        #expect(ledger.admitConnection(from: "10.0.0.1") == nil)
        #expect(ledger.admitConnection(from: "10.0.0.1") == .source)
        #expect(ledger.admitConnection(from: "10.0.0.2") == nil)
        #expect(ledger.admitConnection(from: "10.0.0.3") == .connections)
        ledger.releaseConnection(from: "10.0.0.1")
        #expect(ledger.admitConnection(from: "10.0.0.3") == nil)
        // A release of a source that holds nothing changes nothing.
        ledger.releaseConnection(from: "10.9.9.9")
        #expect(ledger.connections == 3)
        #expect(ledger.admitStream() == nil)
        #expect(ledger.admitStream() == nil)
        #expect(ledger.admitStream() == .streams)
        ledger.releaseStream()
        #expect(ledger.admitStream() == nil)
        #expect(ledger.refused == [.source: 1, .connections: 1, .streams: 1])
        for _ in 0..<5 { ledger.releaseStream() }
        #expect(ledger.streams == 0)
    }

    @Test func theStreamBudgetLeavesDescriptorsForTheRestOfCaidAndTheWindowBoundsAConnection() {
        var configuration = GatewayConfiguration(mode: .mapping, listenPort: 1, servicePort: 2)
        #expect(configuration.streamBudget(descriptorLimit: 65536) == 4096)
        #expect(configuration.streamBudget(descriptorLimit: 2048) == 2048 - 1024 - 256)
        #expect(configuration.streamBudget(descriptorLimit: 1024) == 0)
        // 64 MiB over 200 streams: 320 KiB each, so one connection buffers at most 64 MiB from its client.
        #expect(configuration.streamWindow == 320 << 10)
        #expect(configuration.streamWindow * configuration.maxStreamsPerConnection <= configuration.connectionBuffer)
        configuration.maxStreamsPerConnection = 1
        #expect(configuration.streamWindow == 4 << 20)
        configuration.connectionBuffer = 1 << 20
        configuration.maxStreamsPerConnection = 1000
        #expect(configuration.streamWindow == 64 << 10)
    }

    @Test func theHealthDetailNamesWhatWasRefused() {
        let snapshot = GatewayBudget.Snapshot(connections: 3, streams: 17, sources: 2, refused: ["source": 5, "streams": 0])
        #expect(snapshot.summary == "3 connections from 2 sources, 17 streams; refused 5 (per-source cap)")
    }

    @Test func streamsOverTheBudgetGetRefusedStreamAndTheRestAreServed() async throws {
        let setup = try await GatewayInteropTests.Setup { $0.streamBudget = 3 }
        defer { Task { await setup.finish() } }
        let (_, report) = try setup.client(["--skip-verify", "--streams", "5", "--path", "/index.html"])
        let streams = GatewayInteropTests.streams(report)
        #expect(streams.count == 5, "\(report)")
        let served = streams.filter { ($0["status"] as? String) == "200" && (($0["body"] as? String)?.hasSuffix(setup.page) ?? false) }
        // RFC 9113 §7: REFUSED_STREAM is 0x7.
        let refused = streams.filter { ($0["reset_code"] as? Int) == 7 && $0["status"] is NSNull }
        #expect(served.count == 3, "\(report)")
        #expect(refused.count == 2, "\(report)")
        #expect(setup.server.budget.snapshot.refused["streams"] == 2)
        // Served streams gave their budget back.
        await Self.waitUntil(setup.server.budget) { $0.streams == 0 }
    }

    @Test func anIdleStreamIsResetWhileItsConnectionStaysOpen() async throws {
        let setup = try await GatewayInteropTests.Setup { $0.streamIdleTimeout = .seconds(1) }
        defer { Task { await setup.finish() } }
        let (_, report) = try setup.client(["--skip-verify", "--no-request", "--hold", "3"])
        let stream = try #require(GatewayInteropTests.streams(report).first, "\(report)")
        #expect(stream["status"] as? String == "200")
        // RFC 9113 §7: CANCEL is 0x8; the stream went after about its idle timeout.
        #expect(stream["reset_code"] as? Int == 8, "\(report)")
        let after = stream["reset_after"] as? Double ?? 99
        #expect(after >= 0.9 && after < 5, "\(report)")
        #expect(report["closed_by_server_after"] is NSNull, "the connection must stay: \(report)")
    }

    @Test func oneSourceCannotTakeTheSlotsOfAnother() async throws {
        let setup = try await GatewayInteropTests.Setup { $0.maxConnectionsPerSource = 2 }
        defer { Task { await setup.finish() } }
        // Two silent connections from 127.0.0.1 hold its share.
        let holders = try (0..<2).map { _ in
            try Programs.start("/usr/bin/env", ["python3", Programs.packageRoot + "/Tests/peers/tng_client.py", "--port", String(setup.port), "--stall", "8", "--silent"])
        }
        defer { for holder in holders { holder.signal(SIGKILL); _ = holder.wait() } }
        await Self.waitUntil(setup.server.budget) { $0.connections == 2 }
        let third = try setup.client(["--stall", "3", "--silent"])
        #expect(third.report["closed_by_server"] as? Bool == true, "\(third.report)")
        #expect((third.report["after"] as? Double ?? 99) < 1, "\(third.report)")
        // A client from another address tunnels meanwhile.
        let other = try setup.client(["--skip-verify", "--source", "127.0.0.2", "--path", "/index.html"])
        let stream = try #require(GatewayInteropTests.streams(other.report).first, "\(other.report)")
        #expect(stream["status"] as? String == "200")
        #expect((stream["body"] as? String)?.hasSuffix(setup.page) == true)
        #expect(setup.server.budget.snapshot.refused["source"] == 1)
    }

    /// Waits, at most 5 s, until the budget's snapshot meets `condition`, checking at each change.
    static func waitUntil(_ budget: GatewayBudget, _ condition: @escaping @Sendable (GatewayBudget.Snapshot) -> Bool) async {
        let met = await Awaiting.first(of: budget.changes(), timeout: .seconds(5), where: condition)
        #expect(met != nil, "the budget did not get there in 5 s: \(budget.snapshot)")
    }
}
