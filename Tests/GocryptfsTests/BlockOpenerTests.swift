import Crypto
@testable import Gocryptfs
import Testing

/// The two ways the mount opens a block, OpenSSL's libcrypto (loaded at run time) and swift-crypto (where no
/// libcrypto is installed), give the same bytes and refuse the same damage.
@Suite struct BlockOpenerTests {
    @Test func openSSLIsFoundHere() {
        // Debian 12 with libssl3, as CI installs it: the fast path must be the one tested below.
        #expect(ContentCipher.openSSL == "libcrypto.so.3")
    }

    @Test(arguments: [true, false])
    func bothBackendsOpenWhatWasSealedAndRefuseDamage(openSSL: Bool) throws {
        let cipher = ContentCipher(key: SymmetricKey(size: .bits256))
        let fileID = ContentCipher.randomBytes(16)
        let plain = ContentCipher.randomBytes(4096)
        let tail = ContentCipher.randomBytes(100)
        let sealed = plain.withUnsafeBytes { cipher.encryptBlock($0, number: 7, fileID: fileID, nonce: ContentCipher.randomBytes(16)[...]) }
        let sealedTail = tail.withUnsafeBytes { cipher.encryptBlock($0, number: 8, fileID: fileID, nonce: ContentCipher.randomBytes(16)[...]) }
        let opener = ContentCipher.BlockOpener(cipher: cipher, openSSL: openSSL)
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
        #expect(throws: GocryptfsError.self, "moved to another place in the file") { try open(sealed, number: 8) }
        #expect(throws: GocryptfsError.self, "swapped in from another file") { try open(sealed, number: 7, id: ContentCipher.randomBytes(16)) }
        #expect(throws: GocryptfsError.self, "a block of zeros in a downloaded model") {
            try open([UInt8](repeating: 0, count: ContentCipher.cipherBlockSize), number: 7)
        }
    }
}
