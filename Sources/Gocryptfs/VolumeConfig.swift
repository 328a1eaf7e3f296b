import Foundation

/// A gocryptfs v2 volume's `gocryptfs.conf`: how the master key is wrapped and which features the volume uses.
///
/// Parsing follows gocryptfs's own rules: version 2 only, unknown feature flags are an error, unknown JSON keys are
/// ignored (cppcryptfs writes extra ones), scrypt parameters within gocryptfs's limits.
public struct VolumeConfig: Sendable, Equatable {
    /// The feature flags gocryptfs knows.
    public enum Feature: String, Sendable, CaseIterable {
        case plaintextNames = "PlaintextNames"
        case dirIV = "DirIV"
        case emeNames = "EMENames"
        case gcmIV128 = "GCMIV128"
        case longNames = "LongNames"
        case longNameMax = "LongNameMax"
        case aesSIV = "AESSIV"
        case raw64 = "Raw64"
        case hkdf = "HKDF"
        case fido2 = "FIDO2"
        case xChaCha20Poly1305 = "XChaCha20Poly1305"
    }

    /// The scrypt parameters that turn the password into the key-encryption key.
    public struct Scrypt: Sendable, Equatable {
        public var salt: [UInt8]
        public var n: Int
        public var r: Int
        public var p: Int
        public var keyLength: Int
    }

    /// The flags `gocryptfs -init` sets by default, in the order it writes them.
    public static let defaultFeatures: [Feature] = [.hkdf, .gcmIV128, .dirIV, .emeNames, .longNames, .raw64]

    public var creator: String
    /// Nonce (16) ‖ AES-256-GCM ciphertext of the master key (32) ‖ tag (16).
    public var encryptedKey: [UInt8]
    public var scrypt: Scrypt
    public var version: Int
    /// The flags in file order.
    public var features: [Feature]
    /// The longest encrypted name before it is hashed (`-longnamemax`); 255 unless set.
    public var longNameMax: Int

    /// The most memory scrypt may need to unlock a volume (gocryptfs's default needs 64 MiB).
    public static let maxScryptMemory = 2 << 30

    public func has(_ feature: Feature) -> Bool { features.contains(feature) }

    // MARK: Parsing

    private struct File: Decodable {
        var Creator: String?
        var EncryptedKey: String?
        var ScryptObject: ScryptFile?
        var Version: Int?
        var FeatureFlags: [String]?
        var LongNameMax: Int?
    }

    private struct ScryptFile: Decodable {
        var Salt: String?
        var N: Int?
        var R: Int?
        var P: Int?
        var KeyLen: Int?
    }

    /// Parses and validates the contents of `gocryptfs.conf`.
    public static func parse(_ bytes: [UInt8]) throws(GocryptfsError) -> VolumeConfig {
        func corrupt(_ what: String) -> GocryptfsError {
            GocryptfsError(.corruptConfig, "gocryptfs.conf: \(what)")
        }
        let file: File
        do {
            file = try JSONDecoder().decode(File.self, from: Data(bytes))
        } catch {
            throw corrupt("is not valid JSON of the expected shape (\(error))")
        }
        guard let version = file.Version else { throw corrupt("has no Version") }
        guard version == 2 else {
            throw GocryptfsError(.unsupportedFeature, "gocryptfs.conf: Version \(version) is not supported; caid reads version 2 volumes (gocryptfs 1.0 and later)")
        }
        var features: [Feature] = []
        for name in file.FeatureFlags ?? [] {
            guard let feature = Feature(rawValue: name) else {
                throw GocryptfsError(.unsupportedFeature, "gocryptfs.conf: unknown feature flag \(name); this volume needs a newer reader")
            }
            features.append(feature)
        }
        guard let keyText = file.EncryptedKey, let key = Data(base64Encoded: keyText), !key.isEmpty else {
            throw corrupt("EncryptedKey is missing or not base64")
        }
        guard let object = file.ScryptObject, let saltText = object.Salt, let salt = Data(base64Encoded: saltText),
            let n = object.N, let r = object.R, let p = object.P, let keyLength = object.KeyLen
        else {
            throw corrupt("ScryptObject is missing or incomplete")
        }
        let config = VolumeConfig(
            creator: file.Creator ?? "", encryptedKey: Array(key),
            scrypt: Scrypt(salt: Array(salt), n: n, r: r, p: p, keyLength: keyLength),
            version: version, features: features, longNameMax: file.LongNameMax ?? 255)
        try config.validate()
        return config
    }

    /// Checks the rules gocryptfs enforces, and refuses what caid does not read.
    public func validate() throws(GocryptfsError) {
        func corrupt(_ what: String) -> GocryptfsError { GocryptfsError(.corruptConfig, "gocryptfs.conf: \(what)") }
        guard scrypt.n >= 1 << 10, scrypt.n & (scrypt.n - 1) == 0, scrypt.n <= 1 << 24 else {
            throw corrupt("scrypt N=\(scrypt.n) must be a power of two from 2^10 to 2^24")
        }
        guard scrypt.r >= 8, scrypt.r <= 64, scrypt.p >= 1, scrypt.p <= 16 else {
            throw corrupt("scrypt R=\(scrypt.r), P=\(scrypt.p) out of range (R 8..64, P 1..16)")
        }
        // A damaged or hostile config must not make caid allocate without bound: scrypt needs 128·N·R bytes.
        guard 128 * scrypt.n * scrypt.r <= Self.maxScryptMemory else {
            throw corrupt("scrypt N=\(scrypt.n), R=\(scrypt.r) needs \(128 * scrypt.n * scrypt.r >> 20) MiB, more than caid's limit of \(Self.maxScryptMemory >> 20) MiB")
        }
        // Upper bounds too: a hostile config must not make scrypt derive or hash without limit (gocryptfs writes a
        // 32-byte salt and KeyLen 32, `internal/configfile/scrypt.go`).
        guard scrypt.salt.count >= 32, scrypt.salt.count <= 1024 else {
            throw corrupt("scrypt salt is \(scrypt.salt.count) bytes; 32 to 1024 are accepted")
        }
        guard scrypt.keyLength >= 32, scrypt.keyLength <= 64 else { throw corrupt("scrypt KeyLen \(scrypt.keyLength) must be 32 to 64") }
        if has(.aesSIV) {
            throw GocryptfsError(.unsupportedFeature, "gocryptfs.conf: the volume uses AESSIV (AES-SIV content, as -reverse and -aessiv make it); caid reads AES-GCM volumes only: re-encrypt with 'caid encrypt' or gocryptfs defaults")
        }
        if has(.xChaCha20Poly1305) {
            throw GocryptfsError(.unsupportedFeature, "gocryptfs.conf: the volume uses XChaCha20Poly1305 (-xchacha); caid reads AES-GCM volumes only: re-encrypt with 'caid encrypt' or gocryptfs defaults")
        }
        if has(.fido2) {
            throw GocryptfsError(.unsupportedFeature, "gocryptfs.conf: the volume is unlocked with a FIDO2 token (FIDO2), which a server cannot use; re-encrypt it with a password")
        }
        guard has(.hkdf) else {
            throw GocryptfsError(.unsupportedFeature, "gocryptfs.conf: the volume lacks HKDF (made by gocryptfs before 1.3); re-encrypt it with 'caid encrypt' or a current gocryptfs")
        }
        guard has(.gcmIV128) else {
            throw GocryptfsError(.unsupportedFeature, "gocryptfs.conf: the volume lacks GCMIV128 (96-bit nonces, gocryptfs before 0.8); re-encrypt it")
        }
        if has(.plaintextNames) {
            for conflicting in [Feature.emeNames, .dirIV, .longNames, .raw64, .longNameMax] where has(conflicting) {
                throw corrupt("PlaintextNames conflicts with \(conflicting.rawValue)")
            }
        } else {
            guard has(.emeNames) else { throw corrupt("neither PlaintextNames nor EMENames is set") }
        }
        let expectedKeyLength = 16 + 32 + 16
        guard encryptedKey.count == expectedKeyLength else {
            throw corrupt("EncryptedKey is \(encryptedKey.count) bytes, expected \(expectedKeyLength)")
        }
        guard (1...255).contains(longNameMax), has(.longNameMax) || longNameMax == 255 else {
            throw corrupt("LongNameMax \(longNameMax) is invalid")
        }
    }

    // MARK: Writing

    /// The file's text exactly as gocryptfs writes it (Go's `json.MarshalIndent` with tabs, then a newline).
    public func serialized() -> [UInt8] {
        var lines = [
            "{",
            "\t\"Creator\": \(Self.jsonString(creator)),",
            "\t\"EncryptedKey\": \"\(Data(encryptedKey).base64EncodedString())\",",
            "\t\"ScryptObject\": {",
            "\t\t\"Salt\": \"\(Data(scrypt.salt).base64EncodedString())\",",
            "\t\t\"N\": \(scrypt.n),",
            "\t\t\"R\": \(scrypt.r),",
            "\t\t\"P\": \(scrypt.p),",
            "\t\t\"KeyLen\": \(scrypt.keyLength)",
            "\t},",
            "\t\"Version\": \(version),",
            "\t\"FeatureFlags\": [",
        ]
        for (index, feature) in features.enumerated() {
            lines.append("\t\t\"\(feature.rawValue)\"" + (index < features.count - 1 ? "," : ""))
        }
        if has(.longNameMax) {
            lines.append("\t],")
            lines.append("\t\"LongNameMax\": \(longNameMax)")
        } else {
            lines.append("\t]")
        }
        lines.append("}")
        return Array((lines.joined(separator: "\n") + "\n").utf8)
    }

    /// A JSON string literal as Go writes it (with `<`, `>`, `&` escaped as Go's encoder does).
    private static func jsonString(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "<", ">", "&": out += String(format: "\\u%04x", scalar.value)
            default:
                if scalar.value < 0x20 { out += String(format: "\\u%04x", scalar.value) } else { out.unicodeScalars.append(scalar) }
            }
        }
        return out + "\""
    }
}
