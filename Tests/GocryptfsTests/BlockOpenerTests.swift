import Crypto
@testable import Gocryptfs
import Testing

/// The mount's block opener (BoringSSL's AEAD, one key schedule for many blocks) opens what swift-crypto's
/// `AES.GCM.seal` sealed with gocryptfs's 16-byte nonces, and refuses damage. InteropTests read what gocryptfs wrote.
@Suite struct BlockOpenerTests {
    @Test func opensWhatWasSealedAndRefusesDamage() throws {
        let cipher = ContentCipher(key: SymmetricKey(size: .bits256))
        let fileID = ContentCipher.randomBytes(16)
        let plain = ContentCipher.randomBytes(4096)
        let tail = ContentCipher.randomBytes(100)
        let sealed = plain.withUnsafeBytes { cipher.encryptBlock($0, number: 7, fileID: fileID, nonce: ContentCipher.randomBytes(16)[...]) }
        let sealedTail = tail.withUnsafeBytes { cipher.encryptBlock($0, number: 8, fileID: fileID, nonce: ContentCipher.randomBytes(16)[...]) }
        let opener = ContentCipher.BlockOpener(cipher: cipher)
        var out = [UInt8](repeating: 0, count: 4096)

        func open(_ block: [UInt8], number: UInt64, id: [UInt8] = fileID) throws -> [UInt8] {
            let count = try block.withUnsafeBytes { bytes in
                try out.withUnsafeMutableBytes { target in try opener.open(bytes, number: number, fileID: id, holes: .refuse, into: target) }
            }
            return Array(out[0..<count])
        }

        #expect(try open(sealed, number: 7) == plain)
        #expect(try open(sealedTail, number: 8) == tail, "a short last block")
        var flipped = sealed
        flipped[100] ^= 1
        #expect(throws: GocryptfsError.self) { try open(flipped, number: 7) }
        let left = out
        #expect(left.allSatisfy { $0 == 0 }, "a block that failed leaves none of its bytes in the reply buffer")
        #expect(throws: GocryptfsError.self, "moved to another place in the file") { try open(sealed, number: 8) }
        #expect(throws: GocryptfsError.self, "swapped in from another file") { try open(sealed, number: 7, id: ContentCipher.randomBytes(16)) }
        #expect(throws: GocryptfsError.self, "a block of zeros in a downloaded model") {
            try open([UInt8](repeating: 0, count: ContentCipher.cipherBlockSize), number: 7)
        }
    }
}
