import CaidBase
import Crypto
import Foundation

/// gocryptfs file names: per directory, PKCS#7 padding to 16, EME-AES-256 with the directory IV as tweak, base64url
/// (unpadded with Raw64). Encrypted names longer than 255 characters are stored as `gocryptfs.longname.<hash>` with
/// the full name in a `.name` file beside them. With PlaintextNames, names are stored as they are.
public struct NameCipher: Sendable {
    /// How the volume stores names.
    public enum Mode: Sendable, Equatable {
        /// Names are not encrypted.
        case plaintext
        /// EME names with a per-directory IV (`gocryptfs.diriv`), the default.
        case perDirectoryIV
        /// EME names with an all-zero IV and no `gocryptfs.diriv` (`-deterministic-names`).
        case deterministic
    }

    public static let dirIVFileName = "gocryptfs.diriv"
    public static let configFileName = "gocryptfs.conf"
    public static let longNamePrefix = "gocryptfs.longname."
    public static let longNameSuffix = ".name"
    public static let dirIVSize = 16
    /// Readers cap `.name` files here, as gocryptfs does.
    public static let maxLongNameFileSize = 344

    public let mode: Mode
    let eme: EME
    let raw64: Bool
    let longNames: Bool
    let longNameMax: Int

    public init(config: VolumeConfig, keys: VolumeKeys) {
        if config.has(.plaintextNames) {
            mode = .plaintext
        } else {
            mode = config.has(.dirIV) ? .perDirectoryIV : .deterministic
        }
        eme = EME(key: keys.nameKey)
        raw64 = config.has(.raw64)
        longNames = config.has(.longNames)
        longNameMax = config.longNameMax
    }

    /// The IV of a directory in a deterministic volume.
    public static let zeroIV = [UInt8](repeating: 0, count: dirIVSize)

    /// Checks a plaintext name as gocryptfs does: 1 to 255 bytes, no `/`, no NUL, not `.` or `..`.
    public static func validate(_ name: [UInt8]) throws(GocryptfsError) {
        guard !name.isEmpty, name.count <= 255, name != [0x2E], name != [0x2E, 0x2E],
            !name.contains(0x2F), !name.contains(0)
        else {
            throw GocryptfsError(.invalidName, "'\(String(decoding: name, as: UTF8.self))' is not a valid file name")
        }
    }

    /// Encrypts a plaintext name for the directory whose IV is `iv`.
    /// - Returns: the encrypted base64 name, before any long-name hashing.
    public func encrypt(_ name: [UInt8], iv: [UInt8]) throws(GocryptfsError) -> String {
        try Self.validate(name)
        guard mode != .plaintext else { return String(decoding: name, as: UTF8.self) }
        let padding = 16 - name.count % 16
        let padded = name + [UInt8](repeating: UInt8(padding), count: padding)
        do {
            return Base64URL.encode(try eme.transform(padded, tweak: iv, .encrypt), padded: !raw64)
        } catch {
            throw GocryptfsError(.invalidName, "cannot encrypt name: \(error)")
        }
    }

    /// Decrypts an encrypted base64 name (not a `gocryptfs.longname.` entry: read its `.name` file first).
    public func decrypt(_ encrypted: String, iv: [UInt8]) throws(GocryptfsError) -> [UInt8] {
        guard mode != .plaintext else { return Array(encrypted.utf8) }
        guard let bytes = Base64URL.decode(encrypted, padded: !raw64) else {
            throw GocryptfsError(.corruptName, "'\(encrypted)' is not valid base64")
        }
        guard !bytes.isEmpty, bytes.count % 16 == 0 else {
            throw GocryptfsError(.corruptName, "'\(encrypted)' decodes to \(bytes.count) bytes, not a multiple of 16")
        }
        let padded: [UInt8]
        do {
            padded = try eme.transform(bytes, tweak: iv, .decrypt)
        } catch {
            throw GocryptfsError(.corruptName, "'\(encrypted)': \(error)")
        }
        guard let pad = padded.last, pad >= 1, pad <= 16, Int(pad) < padded.count,
            padded.suffix(Int(pad)).allSatisfy({ $0 == pad })
        else {
            throw GocryptfsError(.corruptName, "'\(encrypted)' has invalid padding (damaged name)")
        }
        let name = Array(padded.dropLast(Int(pad)))
        do {
            try Self.validate(name)
        } catch {
            throw GocryptfsError(.corruptName, "'\(encrypted)' decrypts to an invalid name")
        }
        return name
    }

    /// Whether an encrypted name is stored as a long name.
    public func needsLongName(_ encrypted: String) -> Bool {
        mode != .plaintext && longNames && encrypted.utf8.count > longNameMax
    }

    /// The on-disk name of a long encrypted name: `gocryptfs.longname.` and the base64url SHA-256 of the name.
    public static func longName(for encrypted: String) -> String {
        longNamePrefix + Base64URL.encode(Array(SHA256.hash(data: Data(encrypted.utf8))), padded: false)
    }

    /// The on-disk name for a plaintext name: the encrypted name, or its long-name form.
    /// - Returns: the entry name and, for a long name, the content of its `.name` file.
    public func diskName(for name: [UInt8], iv: [UInt8]) throws(GocryptfsError) -> (entry: String, longNameContent: String?) {
        let encrypted = try encrypt(name, iv: iv)
        guard needsLongName(encrypted) else { return (encrypted, nil) }
        return (Self.longName(for: encrypted), encrypted)
    }

    /// Whether a directory entry is one of gocryptfs's own files, never shown to readers.
    public func isInternal(_ entry: String) -> Bool {
        if mode == .plaintext { return entry == Self.configFileName }
        return entry == Self.configFileName || entry == Self.dirIVFileName
            || (entry.hasPrefix(Self.longNamePrefix) && entry.hasSuffix(Self.longNameSuffix))
    }

    /// Whether an entry is a long-name entry whose real name is in `<entry>.name`.
    public func isLongNameEntry(_ entry: String) -> Bool {
        mode != .plaintext && entry.hasPrefix(Self.longNamePrefix) && !entry.hasSuffix(Self.longNameSuffix)
    }

    /// Checks a long name's `.name` content against the entry's hash, so a swapped `.name` file is caught.
    public static func verifyLongName(entry: String, content: String) throws(GocryptfsError) {
        guard longName(for: content) == entry else {
            throw GocryptfsError(.corruptName, "\(entry)\(longNameSuffix) does not match its entry's hash")
        }
    }

    /// Validates a directory IV read from `gocryptfs.diriv`.
    public static func validateDirIV(_ iv: [UInt8]) throws(GocryptfsError) {
        guard iv.count == dirIVSize else {
            throw GocryptfsError(.corruptName, "\(dirIVFileName) is \(iv.count) bytes, expected \(dirIVSize)")
        }
        guard iv.contains(where: { $0 != 0 }) else {
            throw GocryptfsError(.corruptName, "\(dirIVFileName) is all zeros (damaged)")
        }
    }
}
