import Foundation
import ObjectStore
import OSSProtocol
import Testing

@Suite struct PlanTests {
    @Test func partsCoverTheObjectExactly() {
        for (size, partSize) in [(0, 8), (1, 8), (8, 8), (9, 8), (100, 7), (6_442_450_944, 8 << 20)] as [(UInt64, UInt64)] {
            let plan = DownloadPlan(object: ObjectSummary(key: "k", size: size, etag: "\"e\""), partSize: partSize)
            #expect(plan.parts.reduce(0) { $0 + $1.length } == size)
            #expect(zip(plan.parts, plan.parts.dropFirst()).allSatisfy { $0.offset + $0.length == $1.offset })
            #expect(plan.parts.allSatisfy { $0.length <= partSize && $0.length > 0 })
        }
        let plan = DownloadPlan(object: ObjectSummary(key: "k", size: 10, etag: "e"), partSize: 4)
        #expect(plan.parts.map(\.rangeHeader) == ["bytes=0-3", "bytes=4-7", "bytes=8-9"])
    }

    @Test func partCRCsCombineIntoTheObjectCRC() {
        var generator = SystemRandomNumberGenerator()
        let data = (0..<50_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let plan = DownloadPlan(object: ObjectSummary(key: "k", size: UInt64(data.count), etag: "e"), partSize: 4096)
        var crcs: [Int: UInt64] = [:]
        for part in plan.parts.shuffled() {
            var crc = CRC64()
            crc.update(data[Int(part.offset)..<Int(part.offset + part.length)])
            crcs[part.index] = crc.value
        }
        var whole = CRC64()
        whole.update(data)
        #expect(plan.combinedCRC(crcs) == whole.value)
        crcs[3] = nil
        #expect(plan.combinedCRC(crcs) == nil)
    }

    @Test func manifestSkipsWhatIsCompleteAndNamesWhatIsStale() {
        var manifest = Manifest()
        manifest.entries["a"] = .init(size: 10, etag: "\"1\"", crc64: 5)
        manifest.entries["gone"] = .init(size: 1, etag: "\"2\"", crc64: 6)
        let listing = [ObjectSummary(key: "a", size: 10, etag: "\"1\""), ObjectSummary(key: "b", size: 3, etag: "\"3\"")]
        #expect(manifest.isComplete(listing[0]) && !manifest.isComplete(listing[1]))
        #expect(!manifest.isComplete(ObjectSummary(key: "a", size: 10, etag: "\"changed\"")))
        #expect(manifest.stale(comparedWith: listing) == ["gone"])
        #expect(Manifest.decode(manifest.encoded()) == manifest)
        #expect(Manifest.decode(Data("{broken".utf8)) == Manifest())
    }
}

@Suite struct ProxyTests {
    let oss = URL(string: "https://models.oss-cn-beijing-internal.aliyuncs.com")!

    @Test func choosesLikeCurl() {
        #expect(ProxySettings.resolve(for: oss, override: nil, environment: [:]) == nil)
        #expect(ProxySettings.resolve(for: oss, override: nil, environment: ["HTTPS_PROXY": "http://10.0.0.5:3128"]) == ProxySettings(host: "10.0.0.5", port: 3128))
        #expect(ProxySettings.resolve(for: oss, override: nil, environment: ["https_proxy": "proxy.local:8080"]) == ProxySettings(host: "proxy.local", port: 8080))
        #expect(ProxySettings.resolve(for: oss, override: nil, environment: ["HTTP_PROXY": "p:1"]) == nil)
        #expect(ProxySettings.resolve(for: oss, override: "127.0.0.1:65001", environment: ["HTTPS_PROXY": "p:1", "NO_PROXY": "*"]) == ProxySettings(host: "127.0.0.1", port: 65001))
        for exception in ["*", ".aliyuncs.com", "aliyuncs.com", "example.com, oss-cn-beijing-internal.aliyuncs.com"] {
            #expect(ProxySettings.resolve(for: oss, override: nil, environment: ["HTTPS_PROXY": "p:1", "NO_PROXY": exception]) == nil, "\(exception)")
        }
        #expect(ProxySettings.resolve(for: oss, override: nil, environment: ["HTTPS_PROXY": "p:1", "NO_PROXY": "liyuncs.com"]) != nil)
    }
}
