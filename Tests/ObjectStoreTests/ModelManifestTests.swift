import CaidTestSupport
import Foundation
@testable import OSSProtocol
import Testing

@testable import ObjectStore

/// The model manifest's canonical form: one model, one digest; untrusted bytes give a clear error, never a crash.
@Suite struct ModelManifestTests {
    static let sample = try! ModelManifest(objects: [
        .init(name: "gocryptfs.conf", size: 402, sha256: Array(repeating: 1, count: 32)),
        .init(name: "AbC-_x/gocryptfs.diriv", size: 16, sha256: Array(repeating: 2, count: 32)),
        .init(name: "AbC-_x", size: 4128, sha256: Array(repeating: 3, count: 32)),
    ])

    @Test func theCanonicalFormParsesBackAndAnythingElseIsRefused() throws {
        let bytes = Self.sample.canonicalBytes
        #expect(String(decoding: bytes, as: UTF8.self).hasPrefix(#"{"objects":[{"name":"AbC-_x","sha256":"0303"#))
        #expect(try ModelManifest.parse(bytes) == Self.sample)
        #expect(Self.sample.digest.hasPrefix("sha256:") && Self.sample.digest.count == 71)
        // The same JSON pretty-printed, or with its keys in another order, has another digest: refused.
        let pretty = try JSONSerialization.data(withJSONObject: try JSONSerialization.jsonObject(with: Data(bytes)), options: [.prettyPrinted])
        #expect(throws: ModelManifestError.self) { try ModelManifest.parse(Array(pretty)) }
        #expect(throws: ModelManifestError.self) { try ModelManifest.parse(bytes + [0x0A]) }
        #expect(throws: ModelManifestError.self) {
            try ModelManifest(objects: [.init(name: "a\"b", size: 1, sha256: Array(repeating: 0, count: 32))])
        }
        #expect(throws: ModelManifestError.self) {
            try ModelManifest(objects: [.init(name: "a", size: 1, sha256: Array(repeating: 0, count: 32)), .init(name: "a", size: 2, sha256: Array(repeating: 0, count: 32))])
        }
    }

    @Test func aListingIsHeldToTheManifest() {
        let (missing, unlisted, resized) = Self.sample.compare(listing: [
            (name: "gocryptfs.conf", size: 402), (name: "AbC-_x", size: 9), (name: "extra", size: 1), (name: ModelManifest.fileName, size: 300),
        ])
        #expect(missing == ["AbC-_x/gocryptfs.diriv"])
        #expect(unlisted == ["extra"])
        #expect(resized == ["'AbC-_x' is 9 bytes; the manifest says 4128"])
        #expect(Self.sample.object(named: "AbC-_x")?.size == 4128)
        #expect(Self.sample.object(named: "nope") == nil)
    }

    @Test func mutatedManifestsAreErrorsNotCrashes() {
        let base = Self.sample.canonicalBytes
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<3000 {
            let bytes = Mutation.of(base, using: &generator)
            if let parsed = try? ModelManifest.parse(bytes) { #expect(parsed.canonicalBytes == bytes) }
        }
    }
}
