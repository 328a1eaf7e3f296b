import CaidBase
import CBoringAEAD
import Crypto
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// gocryptfs file contents: an 18-byte header (version 2, 16-byte file ID), then blocks of 4096 plaintext bytes
/// sealed with AES-256-GCM under a random 16-byte nonce, with the block number and file ID as associated data.
///
/// Pure: it turns bytes into bytes. Readers hand it what they read from disk.
public struct ContentCipher: Sendable {
    public static let headerSize = 18
    public static let plainBlockSize = 4096
    public static let nonceSize = 16
    public static let tagSize = 16
    public static let blockOverhead = nonceSize + tagSize
    public static let cipherBlockSize = plainBlockSize + blockOverhead
    static let headerVersion: UInt16 = 2

    let key: SymmetricKey

    public init(key: SymmetricKey) {
        self.key = key
    }

    // MARK: Header

    /// Parses a file header and returns its file ID.
    public static func fileID(fromHeader header: some Collection<UInt8>) throws(GocryptfsError) -> [UInt8] {
        let bytes = Array(header)
        guard bytes.count == headerSize else {
            throw GocryptfsError(.corruptHeader, "file header is \(bytes.count) bytes, expected \(headerSize)")
        }
        let version = UInt16(bytes[0]) << 8 | UInt16(bytes[1])
        guard version == headerVersion else {
            throw GocryptfsError(.corruptHeader, "file header has version \(version), expected \(headerVersion)")
        }
        let id = Array(bytes[2...])
        guard id.contains(where: { $0 != 0 }) else {
            throw GocryptfsError(.corruptHeader, "file header has an all-zero file ID")
        }
        return id
    }

    /// A header for a new file with `fileID` (16 random bytes).
    public static func header(fileID: [UInt8]) -> [UInt8] {
        [UInt8(headerVersion >> 8), UInt8(headerVersion & 0xFF)] + fileID
    }

    // MARK: Sizes

    /// The plaintext size of a ciphertext file of `cipherSize` bytes (gocryptfs's CipherSizeToPlainSize).
    public static func plainSize(cipherSize: UInt64) -> UInt64 {
        guard cipherSize > UInt64(headerSize) else { return 0 }
        let body = cipherSize - UInt64(headerSize)
        let blocks = (body + UInt64(cipherBlockSize) - 1) / UInt64(cipherBlockSize)
        let overhead = blocks * UInt64(blockOverhead)
        // A last block of 1 to 32 bytes cannot hold data; gocryptfs counts it as one byte.
        guard body > overhead else { return 1 }
        return body - overhead
    }

    /// The ciphertext offset where block `number` starts.
    public static func cipherOffset(ofBlock number: UInt64) -> UInt64 {
        UInt64(headerSize) + number * UInt64(cipherBlockSize)
    }

    // MARK: Blocks

    /// What an all-zero ciphertext block means.
    public enum HolePolicy: Sendable {
        /// A hole of a sparse file: it reads as zeros, as gocryptfs reads it (`contentenc` `DecryptBlock`).
        case zeros
        /// Corruption: nothing authenticates these bytes.
        case refuse
    }

    /// Decrypts one ciphertext block (nonce ‖ data ‖ tag). A whole block of zeros is a hole that reads as zeros,
    /// unless `holes` is ``HolePolicy/refuse``.
    /// - Throws: ``GocryptfsError/Code/corruptBlock`` naming the block; no unauthenticated byte is returned.
    public func decryptBlock(
        _ block: UnsafeRawBufferPointer, number: UInt64, fileID: [UInt8], holes: HolePolicy = .zeros
    ) throws(GocryptfsError) -> [UInt8] {
        let opener = blockOpener()
        var failure: GocryptfsError?
        let plain = [UInt8](unsafeUninitializedCapacity: Self.plainBlockSize) { out, initialized in
            do throws(GocryptfsError) {
                initialized = try opener.open(block, number: number, fileID: fileID, holes: holes, into: UnsafeMutableRawBufferPointer(out))
            } catch {
                failure = error
                initialized = 0
            }
        }
        if let failure { throw failure }
        return plain
    }

    /// A context that opens block after block under this key (one key schedule for all of them), for a reader of a
    /// run of blocks.
    public func blockOpener() -> BlockOpener {
        BlockOpener(cipher: self)
    }

    /// Opens gocryptfs content blocks with BoringSSL's AES-256-GCM (the copy in swift-crypto), its key schedule set up
    /// once for all of them (see CBoringAEAD). One per reader of a run of blocks.
    public final class BlockOpener {
        private let context: OpaquePointer?

        init(cipher: ContentCipher) {
            context = cipher.key.withUnsafeBytes { caid_gcm_new($0.baseAddress?.assumingMemoryBound(to: UInt8.self)) }
        }

        deinit { caid_gcm_free(context) }

        /// Decrypts one ciphertext block (nonce ‖ data ‖ tag) into `out` (at least 4096 bytes) and returns how many
        /// plaintext bytes it wrote. A whole block of zeros is a hole that reads as zeros, unless `holes` is
        /// ``HolePolicy/refuse``.
        /// - Throws: ``GocryptfsError/Code/corruptBlock`` naming the block; `out` then holds nothing to use.
        public func open(
            _ block: UnsafeRawBufferPointer, number: UInt64, fileID: [UInt8], holes: HolePolicy, into out: UnsafeMutableRawBufferPointer
        ) throws(GocryptfsError) -> Int {
            guard block.count > ContentCipher.blockOverhead, block.count <= ContentCipher.cipherBlockSize, let source = block.baseAddress else {
                throw GocryptfsError(.corruptBlock, "block \(number) is \(block.count) bytes, not a valid block size")
            }
            let length = block.count - ContentCipher.blockOverhead
            guard fileID.count == 16 else {
                throw GocryptfsError(.corruptHeader, "block \(number): the file ID is \(fileID.count) bytes, not 16")
            }
            guard out.count >= length, let target = out.baseAddress else {
                throw GocryptfsError(.corruptBlock, "block \(number): no room for its \(length) plaintext bytes")
            }
            if block.count == ContentCipher.cipherBlockSize, ContentCipher.isZero(block) {
                guard holes == .zeros else {
                    throw GocryptfsError(.corruptBlock, "block \(number) is all zeros: a downloaded model has no holes, so it was overwritten")
                }
                target.initializeMemory(as: UInt8.self, repeating: 0, count: length)
                return length
            }
            guard ContentCipher.isZero(UnsafeRawBufferPointer(rebasing: block[0..<ContentCipher.nonceSize])) == false else {
                throw GocryptfsError(.corruptBlock, "block \(number) has an all-zero nonce (a damaged block)")
            }
            guard let context else {
                // Only out of memory: BoringSSL takes every 32-byte key.
                throw GocryptfsError(.io, "block \(number): BoringSSL could not set up the AES-256-GCM key (out of memory?)")
            }
            // The associated data, as gocryptfs's contentenc builds it: the block number (big-endian) ‖ the file ID.
            var aad: (UInt64, UInt64, UInt64) = (number.bigEndian, 0, 0)
            let authentic = withUnsafeMutableBytes(of: &aad) { aadBytes in
                fileID.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: aadBytes[8...]).copyMemory(from: $0) }
                return caid_gcm_open_block(
                    context, source.assumingMemoryBound(to: UInt8.self), block.count,
                    aadBytes.baseAddress?.assumingMemoryBound(to: UInt8.self), aadBytes.count, target.assumingMemoryBound(to: UInt8.self)) == 1
            }
            guard authentic else {
                throw GocryptfsError(.corruptBlock, "block \(number) fails authentication (damaged, swapped or moved)")
            }
            return length
        }
    }

    /// Encrypts one plaintext block (at most 4096 bytes) with `nonce`, 16 fresh random bytes.
    public func encryptBlock(_ plain: UnsafeRawBufferPointer, number: UInt64, fileID: [UInt8], nonce: ArraySlice<UInt8>) -> [UInt8] {
        seal(plain, nonce: Array(nonce), blockNumber: number, fileID: fileID)
    }

    /// AES-256-GCM with a 16-byte nonce; returns nonce ‖ ciphertext ‖ tag.
    func seal(_ plain: UnsafeRawBufferPointer, nonce: [UInt8], blockNumber: UInt64, fileID: [UInt8]?) -> [UInt8] {
        // A 16-byte nonce is always valid for AES.GCM.Nonce and sealing cannot fail with a 32-byte key.
        guard let gcmNonce = try? AES.GCM.Nonce(data: nonce),
            let box = try? AES.GCM.seal(plain, using: key, nonce: gcmNonce, authenticating: Self.aad(blockNumber, fileID))
        else { return [] }
        var out = nonce
        out.reserveCapacity(nonce.count + plain.count + Self.tagSize)
        out.append(contentsOf: box.ciphertext)
        out.append(contentsOf: box.tag)
        return out
    }

    /// Opens nonce ‖ ciphertext ‖ tag; throws when authentication fails.
    func open(
        nonce: some DataProtocol, ciphertext: some DataProtocol, tag: some DataProtocol, blockNumber: UInt64, fileID: [UInt8]?
    ) throws -> [UInt8] {
        let box = try AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: nonce), ciphertext: ciphertext, tag: tag)
        // This opens the wrapped master key: the `Data` swift-crypto returns is wiped once copied.
        var plain = try AES.GCM.open(box, using: key, authenticating: Self.aad(blockNumber, fileID))
        defer { wipeBytes(&plain) }
        return Array(plain)
    }

    /// Big-endian block number, then the file ID (nothing for the master key and symlink targets).
    static func aad(_ blockNumber: UInt64, _ fileID: [UInt8]?) -> [UInt8] {
        var aad = withUnsafeBytes(of: blockNumber.bigEndian) { Array($0) }
        if let fileID { aad += fileID }
        return aad
    }

    static func isZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.allSatisfy { $0 == 0 }
    }

    /// Bytes from the kernel's CSPRNG: one read of /dev/urandom for the whole request (a nonce per block would
    /// otherwise cost two getrandom calls each), with the standard generator as the fallback.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var filled = 0
        if urandom >= 0 {
            while filled < count {
                let n = bytes.withUnsafeMutableBytes { Glibc.read(urandom, $0.baseAddress! + filled, count - filled) }
                guard n > 0 else { break }
                filled += n
            }
        }
        var generator = SystemRandomNumberGenerator()
        while filled < count {
            withUnsafeBytes(of: generator.next() as UInt64) { word in
                for byte in word where filled < count {
                    bytes[filled] = byte
                    filled += 1
                }
            }
        }
        return bytes
    }

    private static let urandom = Glibc.open("/dev/urandom", O_RDONLY | O_CLOEXEC)
}

extension ContentCipher {
    /// Encrypts a symlink target: sealed as block 0 with no file ID, then unpadded base64url.
    public func encryptSymlinkTarget(_ target: [UInt8]) -> String {
        guard !target.isEmpty else { return "" }
        let sealed = target.withUnsafeBytes { seal($0, nonce: Self.randomBytes(Self.nonceSize), blockNumber: 0, fileID: nil) }
        return Base64URL.encode(sealed, padded: false)
    }

    /// Decrypts a stored symlink target.
    public func decryptSymlinkTarget(_ stored: String) throws(GocryptfsError) -> [UInt8] {
        guard !stored.isEmpty else { return [] }
        guard let bytes = Base64URL.decode(stored, padded: false), bytes.count > Self.blockOverhead else {
            throw GocryptfsError(.corruptName, "symlink target is not valid encrypted base64")
        }
        do {
            return try open(
                nonce: bytes[0..<Self.nonceSize], ciphertext: bytes[Self.nonceSize..<(bytes.count - Self.tagSize)],
                tag: bytes[(bytes.count - Self.tagSize)...], blockNumber: 0, fileID: nil)
        } catch {
            throw GocryptfsError(.corruptName, "symlink target fails authentication")
        }
    }
}
