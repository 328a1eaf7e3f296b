import AsyncHTTPClient
import Attestation
import CaidBase
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

    /// A CCEL as TDX firmware lays it out (TCG PC Client spec): the SHA-1-format spec ID event (TCG_EfiSpecIDEvent:
    /// signature, platform class, versions, uintn size, one algorithm, SHA-384 of 48 bytes, no vendor info), then
    /// EV_IPL TCG_PCR_EVENT2 records with SHA-384 digests for CC-MR 1 to 3 (RTMR0–2), then the table's unused space.
    /// A real verifier replays them; ``FakeTSM`` started with this table extends its RTMRs to match.
    static func ccel(events: Int, padding: UInt8, paddingBytes: Int = 4096) -> (table: [UInt8], events: [UInt8]) {
        func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
        let specData = Array("Spec ID Event03".utf8) + [0] + le32(0) + [0, 2, 0, 2] + le32(1) + [0x0C, 0x00, 48, 0x00] + [0]
        var log = le32(0) + le32(3) + [UInt8](repeating: 0, count: 20) + le32(UInt32(specData.count)) + specData
        for index in 0..<events {
            let data = Array("event \(index)".utf8)
            log += le32(UInt32(index % 3 + 1)) + le32(0xD) + le32(1) + [0x0C, 0x00] + [UInt8](repeating: UInt8(index), count: 48)
                + le32(UInt32(data.count)) + data
        }
        return (log + [UInt8](repeating: padding, count: paddingBytes), log)
    }

    /// Kernels with only the extend ioctl read RTMR3 from a quote's TD report; it must be the register the kernel's
    /// sysfs file shows (the fake TSM keeps both, as the TDX module does). The ioctl itself needs a TDX guest.
    @Test func rtmr3ReadFromAQuoteIsTheRegister() async throws {
        let dir = try TemporaryDirectory("caid-tsm")
        defer { dir.remove() }
        let tsm = try await FakeTSM(directory: dir.path, rtmr3Extends: [String(repeating: "ab", count: 48)])
        defer { tsm.stop() }
        let sysfs = SysfsRTMR(directory: tsm.measurements)
        let fromQuote = IoctlRTMR(device: dir.path + "/no-tdx-guest", quotes: TDXAttester(reportRoot: tsm.reportRoot))
        let value = try sysfs.read()
        #expect(value != AAEventLog.zero)
        #expect(try fromQuote.read() == value)
        try sysfs.extend(Array(repeating: 7, count: 48))
        #expect(try fromQuote.read() == AAEventLog.replay([Array(repeating: 7, count: 48)], from: value))
        #expect(!fromQuote.isAvailable)
        let error = #expect(throws: AttestationError.self) { try fromQuote.extend(Array(repeating: 7, count: 48)) }
        #expect(error?.message.contains("no-tdx-guest") == true)
    }

    @Test func eventLogIsTrimmedAsTheAttestationAgentDoes() async throws {
        let dir = try TemporaryDirectory("caid-tsm")
        defer { dir.remove() }
        let tsm = try await FakeTSM(directory: dir.path)
        defer { tsm.stop() }
        let (table, events) = Self.ccel(events: 3, padding: 0xFF)
        try Data(table).write(to: URL(fileURLWithPath: dir.path + "/CCEL"))
        let evidence = try TDXAttester(reportRoot: tsm.reportRoot, eventLog: dir.path + "/CCEL").evidence(reportData: [1], gpuEvidence: nil)
        // The events, then the 8-byte end flag; the table's padding stays behind.
        #expect(evidence["cc_eventlog"]?.stringValue.flatMap(Base64.decodeStandard) == events + [UInt8](repeating: 0xFF, count: 8))
        // No event log: null, never "" (openanolis Trustee >= 1.7.8 fails on an empty string).
        let none = try TDXAttester(reportRoot: tsm.reportRoot, eventLog: dir.path + "/no-CCEL").evidence(reportData: [1], gpuEvidence: nil)
        #expect(none["cc_eventlog"] == .null)
    }

    @Test func eventLogTrimmingRefusesDamageAndSurvivesGarbage() throws {
        let zeroPadded = Self.ccel(events: 2, padding: 0)
        #expect(try CCEventLog.trim(zeroPadded.table) == zeroPadded.events + [UInt8](repeating: 0xFF, count: 8))
        let noEnd = Self.ccel(events: 2, padding: 0xFF, paddingBytes: 0).table
        let error = #expect(throws: AttestationError.self) { try CCEventLog.trim(noEnd) }
        #expect(error?.message.contains("without its end flag") == true)
        var unknownDigest = Self.ccel(events: 1, padding: 0xFF).table
        let firstEvent = 8 + 20 + 4 + 33
        unknownDigest[firstEvent + 12] = 0x99
        let unknown = #expect(throws: AttestationError.self) { try CCEventLog.trim(unknownDigest) }
        #expect(unknown?.message.contains("0x99") == true)
        // Damaged tables of every shape: an error or a trimmed log, never a crash or a hang.
        var generator = SystemRandomNumberGenerator()
        let base = Self.ccel(events: 4, padding: 0xFF, paddingBytes: 64).table
        for _ in 0..<3000 {
            var input = base
            for _ in 0..<Int.random(in: 1...6, using: &generator) {
                input[Int.random(in: 0..<input.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            }
            input = Array(input.prefix(Int.random(in: 0...input.count, using: &generator)))
            if let trimmed = try? CCEventLog.trim(input) { #expect(trimmed.count <= input.count + 8) }
        }
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
            #expect(device.architecture == "Hopper")
            #expect(device.ccEnabled)
            #expect(Array(device.report.prefix(32)) == nonce)
            #expect(String(decoding: device.certificateChain, as: UTF8.self).contains("FAKE-GPU\(index)"))
        }
        let embedded = collection.embeddedEvidence["evidence_list"]?.arrayValue
        #expect(embedded?.count == 2)
        #expect(embedded?.first?["uuid"]?.stringValue == collection.devices[0].uuid)
        #expect(embedded?.first?["attestation_report"]?.stringValue == Base64.standard(collection.devices[0].report))
        #expect(collection.embeddedEvidence["collection_time"]?.stringValue?.hasSuffix("Z") == true)
        // The device form as every upstream nvidia verifier takes it: "Hopper", the report in hex.
        let device = collection.deviceEvidence["device_evidence_list"]?.arrayValue?.first
        #expect(device?["arch"]?.stringValue == "Hopper")
        #expect(device?["evidence"]?.stringValue == collection.devices[0].report.map { String(format: "%02x", $0) }.joined())
        #expect(device?["certificate"]?.stringValue == Base64.standard(collection.devices[0].certificateChain))

        // No NVML: no GPU evidence, no error.
        #expect(try GPUAttester(library: dir.path + "/libnvidia-ml-missing.so").collect(nonce: nonce) == nil)
        // A GPU whose report fails is left out and named, as Trustiflux's attester does; the others still go.
        let second = try FakeNVML.build(in: dir.path, behaviour: .secondFails)
        let partial = try #require(try GPUAttester(library: second).collect(nonce: nonce))
        #expect(partial.devices.map(\.index) == [0])
        #expect(partial.missing.map(\.index) == [1])
        #expect(partial.missing.first?.reason.contains("nvmlDeviceGetConfComputeGpuAttestationReport") == true)
        #expect(partial.missing.first?.reason.contains("Not Supported") == true)
        #expect(partial.missing.first?.uuid.hasPrefix("GPU-00000001") == true)
        let failing = try #require(try GPUAttester(library: try FakeNVML.build(in: dir.path, failing: true)).collect(nonce: nonce))
        #expect(failing.devices.isEmpty)
        #expect(failing.missing.count == 2)
        // GPUs not in CC mode: no GPU evidence at all (an empty device list trips openanolis Trustee 1.6).
        #expect(try GPUAttester(library: try FakeNVML.build(in: dir.path, behaviour: .ccOff)).collect(nonce: nonce) == nil)
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
