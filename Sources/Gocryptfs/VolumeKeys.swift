import CaidBase
import Crypto
import Foundation
import _CryptoExtras

#if canImport(Glibc)
import Glibc
#endif

/// The keys of an unlocked volume, derived from its master key with HKDF-SHA256 as gocryptfs does.
///
/// All key material lives in swift-crypto's `SymmetricKey`, whose storage is zeroed when released: dropping the last
/// reference to a `VolumeKeys` wipes the keys.
public struct VolumeKeys: Sendable {
    /// The 32-byte master key.
    public let masterKey: SymmetricKey
    /// AES-256-GCM key for contents, symlink targets and the wrapped master key.
    public let contentKey: SymmetricKey
    /// AES-256 key for EME name encryption.
    public let nameKey: SymmetricKey

    static let contentInfo = "AES-GCM file content encryption"
    static let nameInfo = "EME filename encryption"

    /// Derives the content and name keys from a master key (HKDF volumes; all gocryptfs ≥ 1.3 ones).
    public init(masterKey: SymmetricKey) {
        self.masterKey = masterKey
        contentKey = Self.hkdf(masterKey, info: Self.contentInfo)
        nameKey = Self.hkdf(masterKey, info: Self.nameInfo)
    }

    static func hkdf(_ key: SymmetricKey, info: String) -> SymmetricKey {
        HKDF<SHA256>.deriveKey(inputKeyMaterial: key, info: Data(info.utf8), outputByteCount: 32)
    }

    /// Unlocks a volume: scrypt of the password, HKDF of that (the surprise in gocryptfs's format), then AES-GCM
    /// unwrap of `EncryptedKey` as content block 0 with no file ID.
    /// - Parameter password: raw bytes, not normalised; strip one trailing newline before, as `-passfile` does.
    /// - Throws: ``GocryptfsError/Code/wrongPassword`` when authentication fails.
    public static func unlock(_ config: VolumeConfig, password: UnsafeRawBufferPointer) throws(GocryptfsError) -> VolumeKeys {
        try config.validate()
        let kek = try keyEncryptionKey(config, password: password)
        let wrapped = config.encryptedKey
        var master: [UInt8]
        do {
            master = try ContentCipher(key: kek).open(
                nonce: wrapped[0..<16], ciphertext: wrapped[16..<48], tag: wrapped[48..<64], blockNumber: 0, fileID: nil)
        } catch {
            throw GocryptfsError(.wrongPassword, "the password does not open this volume (gocryptfs.conf); check the password or the key in Trustee")
        }
        defer { wipeBytes(&master) }
        return VolumeKeys(masterKey: SymmetricKey(data: master))
    }

    /// Wraps a master key for a new `gocryptfs.conf`.
    static func wrap(_ masterKey: SymmetricKey, config: VolumeConfig, password: UnsafeRawBufferPointer, nonce: [UInt8]) throws(GocryptfsError) -> [UInt8] {
        let kek = try keyEncryptionKey(config, password: password)
        return masterKey.withUnsafeBytes { raw in
            ContentCipher(key: kek).seal(raw, nonce: nonce, blockNumber: 0, fileID: nil)
        }
    }

    private static func keyEncryptionKey(_ config: VolumeConfig, password: UnsafeRawBufferPointer) throws(GocryptfsError) -> SymmetricKey {
        let scrypt: SymmetricKey
        do {
            scrypt = try KDF.Scrypt.deriveKey(
                from: password, salt: config.scrypt.salt, outputByteCount: config.scrypt.keyLength,
                rounds: config.scrypt.n, blockSize: config.scrypt.r, parallelism: config.scrypt.p)
        } catch {
            throw GocryptfsError(.corruptConfig, "gocryptfs.conf: scrypt failed with these parameters (\(error))")
        }
        // Only the first 32 bytes key AES-256, as in gocryptfs.
        let first32 = scrypt.withUnsafeBytes { SymmetricKey(data: $0.prefix(32)) }
        return hkdf(first32, info: contentInfo)
    }
}
