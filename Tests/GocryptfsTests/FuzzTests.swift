import CaidTestSupport
import Crypto
import Foundation
import Gocryptfs
import Testing

/// Untrusted bytes from disk never crash the format code: they give a `GocryptfsError`.
@Suite struct FuzzTests {
    static let realConfig = Array("""
        {
        \t"Creator": "gocryptfs 2.3",
        \t"EncryptedKey": "4gGdcVL9T97IeRaToc+vZ9iqbA4cXBvkXQg0dTkpMiwQGhWKdm9CoLdE/VS4mMXi421GWD6HGw0kkFg1r5c1CA==",
        \t"ScryptObject": {
        \t\t"Salt": "VuDO/OSekgASTYXBSJLtmgpN0VWXVjUnInAeFUYbrAw=",
        \t\t"N": 65536,
        \t\t"R": 8,
        \t\t"P": 1,
        \t\t"KeyLen": 32
        \t},
        \t"Version": 2,
        \t"FeatureFlags": [
        \t\t"HKDF",
        \t\t"GCMIV128",
        \t\t"DirIV",
        \t\t"EMENames",
        \t\t"LongNames",
        \t\t"Raw64"
        \t]
        }

        """.utf8)

    @Test func theRealConfigParsesAndMutationsNeverCrash() throws {
        let config = try VolumeConfig.parse(Self.realConfig)
        #expect(config.features == VolumeConfig.defaultFeatures)
        #expect(config.serialized() == Self.realConfig)
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<3000 {
            let bytes = Mutation.of(Self.realConfig, using: &generator)
            do {
                _ = try VolumeConfig.parse(bytes)
            } catch {
                #expect([.corruptConfig, .unsupportedFeature].contains(error.code))
            }
        }
    }

    @Test func hostileScryptParametersAreRefusedBeforeAllocating() throws {
        var text = String(decoding: Self.realConfig, as: UTF8.self)
        text = text.replacingOccurrences(of: "\"N\": 65536", with: "\"N\": 16777216").replacingOccurrences(of: "\"R\": 8", with: "\"R\": 64")
        #expect { try VolumeConfig.parse(Array(text.utf8)) } throws: { "\($0)".contains("MiB") }
        // KeyLen and the salt have upper bounds too: a hostile config cannot make the key derivation run away.
        let original = String(decoding: Self.realConfig, as: UTF8.self)
        for (from, to, fragment) in [
            ("\"KeyLen\": 32", "\"KeyLen\": 2147483647", "KeyLen 2147483647 must be 32 to 64"),
            ("\"KeyLen\": 32", "\"KeyLen\": 65", "must be 32 to 64"),
            ("\"Salt\": \"VuDO/OSekgASTYXBSJLtmgpN0VWXVjUnInAeFUYbrAw=\"", "\"Salt\": \"\(Data(count: 2048).base64EncodedString())\"", "2048 bytes; 32 to 1024"),
        ] {
            let hostile = Array(original.replacingOccurrences(of: from, with: to).utf8)
            #expect { try VolumeConfig.parse(hostile) } throws: { "\($0)".contains(fragment) }
        }
    }

    @Test func randomBlocksHeadersAndLinksAreErrors() throws {
        let cipher = ContentCipher(key: SymmetricKey(size: .bits256))
        let fileID = ContentCipher.randomBytes(16)
        for size in [0, 1, 16, 32, 33, 100, 4127, 4128, 4129, 9000] {
            let bytes = ContentCipher.randomBytes(size)
            let result = bytes.withUnsafeBytes { buffer in
                Result { () throws(GocryptfsError) in try cipher.decryptBlock(buffer, number: 3, fileID: fileID) }
            }
            guard case .failure(let error) = result else {
                Issue.record("\(size) random bytes decrypted")
                continue
            }
            #expect(error.code == .corruptBlock)
        }
        // A whole block of zeros is a hole; a short one is not.
        let hole = [UInt8](repeating: 0, count: ContentCipher.cipherBlockSize)
        #expect(try hole.withUnsafeBytes { try cipher.decryptBlock($0, number: 0, fileID: fileID) } == [UInt8](repeating: 0, count: 4096))
        #expect(throws: GocryptfsError.self) {
            try [UInt8](repeating: 0, count: 100).withUnsafeBytes { try cipher.decryptBlock($0, number: 0, fileID: fileID) }
        }
        for header in [[UInt8](), [0, 2] + [UInt8](repeating: 0, count: 16), [0, 3] + fileID, Array(fileID.prefix(10))] {
            #expect(throws: GocryptfsError.self) { try ContentCipher.fileID(fromHeader: header) }
        }
        for link in ["!!!", "A", String(repeating: "A", count: 60), "AAAA"] {
            #expect(throws: GocryptfsError.self) { try cipher.decryptSymlinkTarget(link) }
        }
    }
}
