import AsyncHTTPClient
import Attestation
import CaidCore
import CaidTestSupport
import Foundation
import KeyBroker
import Testing

/// The TDX attester against a fake configfs-tsm tree (FUSE), the GPU attester against a fake NVML library, and
/// both through the test KBS, which checks the quote's REPORTDATA and each GPU report's nonce.
@Suite(.serialized) struct AttesterTests {
    @Test func tdxQuoteThroughConfigfsTSM() async throws {
        let dir = try TemporaryDirectory("caid-tsm")
        defer { dir.remove() }
        let tsm = try await FakeTSM(directory: dir.path)
        defer { tsm.stop() }
        let attester = TDXAttester(reportRoot: tsm.reportRoot, eventLog: dir.path + "/no-ccel")
        let reportData = (0..<48).map { UInt8($0) }
        let evidence = try attester.evidence(reportData: reportData, gpuEvidence: nil)
        let quote = try #require(evidence["quote"]?.stringValue.flatMap(Base64.decodeStandard))
        #expect(Array(quote[568..<632]) == reportData + [UInt8](repeating: 0, count: 16))
        #expect(evidence["cc_eventlog"] == JSONValue.null)
        // One entry made, none left behind.
        #expect(tsm.stats().made == 1)
        #expect(tsm.stats().left.isEmpty)
    }

    @Test func eventLogIsCarriedWhenPresent() async throws {
        let dir = try TemporaryDirectory("caid-tsm")
        defer { dir.remove() }
        let tsm = try await FakeTSM(directory: dir.path)
        defer { tsm.stop() }
        let ccel = Array("TDEL-fake-event-log".utf8)
        try Data(ccel).write(to: URL(fileURLWithPath: dir.path + "/CCEL"))
        let evidence = try TDXAttester(reportRoot: tsm.reportRoot, eventLog: dir.path + "/CCEL").evidence(reportData: [1], gpuEvidence: nil)
        #expect(evidence["cc_eventlog"]?.stringValue.flatMap(Base64.decodeStandard) == ccel)
    }

    @Test func generationRaceIsRetriedThenReported() async throws {
        let dir = try TemporaryDirectory("caid-tsm")
        defer { dir.remove() }
        let once = try await FakeTSM(directory: dir.path, race: 1)
        defer { once.stop() }
        _ = try TDXAttester(reportRoot: once.reportRoot).quote(reportData: [UInt8](repeating: 7, count: 64))
        #expect(once.stats().made == 2)
        #expect(once.stats().left.isEmpty)

        let always = try await FakeTSM(directory: dir.path, race: 100)
        defer { always.stop() }
        let error = #expect(throws: AttestationError.self) { try TDXAttester(reportRoot: always.reportRoot).quote(reportData: [UInt8](repeating: 7, count: 64)) }
        #expect(error?.message.contains("another process") == true)
        #expect(always.stats().left.isEmpty)
    }

    @Test func wrongProviderIsRefusedByName() async throws {
        let dir = try TemporaryDirectory("caid-tsm")
        defer { dir.remove() }
        let tsm = try await FakeTSM(directory: dir.path, provider: "sev_guest")
        defer { tsm.stop() }
        let error = #expect(throws: AttestationError.self) { try TDXAttester(reportRoot: tsm.reportRoot).quote(reportData: [UInt8](repeating: 0, count: 64)) }
        #expect(error?.message.contains("sev_guest") == true)
        #expect(error?.message.contains("not tdx_guest") == true)
        #expect(tsm.stats().left.isEmpty)
    }

    @Test func autoRefusesWithoutATEE() throws {
        let error = #expect(throws: AttestationError.self) { try EvidenceProvider.select("auto", reportRoot: "/nonexistent/tsm/report") }
        #expect(error?.code == .noTEE)
        #expect(error?.message.contains("CAID_ATTESTER=sample") == true)
        #expect(try EvidenceProvider.select("sample").attester.tee == .sample)
    }

    @Test func gpuEvidenceThroughNVML() throws {
        let dir = try TemporaryDirectory("caid-nvml")
        defer { dir.remove() }
        let library = try FakeNVML.build(in: dir.path)
        let nonce = (0..<32).map { UInt8(255 - $0) }
        let collection = try #require(try GPUAttester(library: library).collect(nonce: nonce))
        #expect(collection.driverVersion == "550.127.08")
        #expect(collection.devices.count == 2)
        for (index, device) in collection.devices.enumerated() {
            #expect(device.index == index)
            #expect(device.architecture == "HOPPER")
            #expect(device.ccEnabled)
            #expect(Array(device.report.prefix(32)) == nonce)
            #expect(String(decoding: device.certificateChain, as: UTF8.self).contains("FAKE-GPU\(index)"))
        }
        let legacy = collection.legacyEvidence["evidence_list"]?.arrayValue
        #expect(legacy?.count == 2)
        #expect(legacy?.first?["uuid"]?.stringValue == collection.devices[0].uuid)
        #expect(collection.additionalEvidence["device_evidence_list"]?.arrayValue?.first?["arch"]?.stringValue == "HOPPER")

        // No NVML: no GPU evidence, no error. A failing NVML call: an error naming it.
        #expect(try GPUAttester(library: dir.path + "/libnvidia-ml-missing.so").collect(nonce: nonce) == nil)
        let failing = try FakeNVML.build(in: dir.path, failing: true)
        let error = #expect(throws: AttestationError.self) { try GPUAttester(library: failing).collect(nonce: nonce) }
        #expect(error?.message.contains("nvmlDeviceGetConfComputeGpuAttestationReport") == true)
        #expect(error?.message.contains("Not Supported") == true)
    }

    /// TDX and GPU evidence together through the test KBS, in both forms: `gpu_evidence` inside the TDX evidence
    /// (0.1.0) and additional evidence (0.4.0). The KBS checks the quote's binding and each GPU's nonce.
    @Test(arguments: ["legacy", "current"]) func tdxWithGPUsAttestsToTheKBS(dialect: String) async throws {
        let dir = try TemporaryDirectory("caid-tdx-kbs")
        defer { dir.remove() }
        let tsm = try await FakeTSM(directory: dir.path)
        defer { tsm.stop() }
        let library = try FakeNVML.build(in: dir.path)
        try Data("pw".utf8).write(to: URL(fileURLWithPath: dir.path + "/key"))
        let kbs = try await TrusteePeer(dialect: dialect, resources: ["default/aliyun/key": dir.path + "/key"], directory: dir.path)
        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        defer { Task { try? await http.shutdown() } }
        let provider = EvidenceProvider(attester: TDXAttester(reportRoot: tsm.reportRoot), gpu: GPUAttester(library: library))
        let client = KBSClient(trusteeURL: kbs.url, protocol: .auto, provider: provider, http: http, logger: quietLogger)
        let session = try await client.attest()
        #expect(session.tee == .tdx)
        let secret = try await client.resource(ResourceURI(repository: "default", type: "aliyun", tag: "key"))
        let bytes = secret.withBytes { Array($0) }
        #expect(bytes == Array("pw".utf8))
        #expect(kbs.requests().contains { ($0["attested"] as? String) == "tdx" && ($0["gpu"] as? Bool) == true })
        #expect(tsm.stats().left.isEmpty)
    }
}
