import Attestation
import CaidBase
import Crypto
import Foundation

/// Why a KBS response could not be decrypted.
public struct JWEError: Error, Sendable, CustomStringConvertible {
    public var message: String
    init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A KBS resource response: a JWE in flattened JSON form, in either of the two layouts Trustee has used.
///
/// - Legacy (KBS 0.1.0): `protected` is the header JSON itself, not base64; the GCM tag is appended to
///   `ciphertext`; `tag` is empty; there is no additional authenticated data.
/// - RFC 7516 (KBS ≥ 0.2.0): `protected` is base64url and its ASCII text is the AAD; `tag` is detached.
///
/// The layout is recognised from the `protected` member itself, so either dialect's server works with either.
public struct JWE: Sendable {
    public enum Layout: Sendable, Equatable { case legacy, rfc7516 }

    public let layout: Layout
    public let algorithm: String
    public let encryption: String
    let header: [String: JSONValue]
    let protectedText: String
    let encryptedKey: [UInt8]
    let iv: [UInt8]
    let ciphertext: [UInt8]
    let tag: [UInt8]

    /// Largest response body accepted; model passwords are bytes, not megabytes.
    public static let maximumSize = 1 << 20

    public init(parsing body: [UInt8]) throws(JWEError) {
        guard body.count <= Self.maximumSize else { throw JWEError("the response is \(body.count) bytes, more than the 1 MiB a resource may be") }
        guard let value = try? JSONDecoder().decode(JSONValue.self, from: Data(body)), case .object(let members) = value else {
            throw JWEError("the response is not a JSON object (\(body.count) bytes)")
        }
        func field(_ name: String) throws(JWEError) -> [UInt8] {
            guard let text = members[name]?.stringValue else { throw JWEError("the response has no '\(name)' string") }
            guard let bytes = Base64.decodeURL(text) else { throw JWEError("'\(name)' is not base64url") }
            return bytes
        }
        guard let protected = members["protected"]?.stringValue else { throw JWEError("the response has no 'protected' header") }
        let headerBytes: [UInt8]
        if protected.hasPrefix("{") {
            layout = .legacy
            headerBytes = Array(protected.utf8)
        } else if let decoded = Base64.decodeURL(protected) {
            layout = .rfc7516
            headerBytes = decoded
        } else {
            throw JWEError("the 'protected' header is neither JSON nor base64url")
        }
        guard let headerValue = try? JSONDecoder().decode(JSONValue.self, from: Data(headerBytes)), case .object(var header) = headerValue else {
            throw JWEError("the protected header is not a JSON object")
        }
        // The JOSE header is the union of the protected, shared unprotected and per-recipient headers (RFC 7516
        // §7.2.1), which must not share names. Trustee puts `epk` in the protected one; other encoders (jwcrypto)
        // put it in the per-recipient `header`.
        for name in ["unprotected", "header"] {
            guard let extra = members[name] else { continue }
            guard case .object(let more) = extra else { throw JWEError("'\(name)' is not a JSON object") }
            for (key, value) in more {
                guard header.updateValue(value, forKey: key) == nil else { throw JWEError("header parameter '\(key)' appears twice") }
            }
        }
        guard let alg = header["alg"]?.stringValue, let enc = header["enc"]?.stringValue else {
            throw JWEError("the JWE header has no 'alg' and 'enc'")
        }
        guard enc == "A256GCM" else { throw JWEError("content encryption '\(enc)' is not supported; the KBS uses A256GCM") }
        self.header = header
        self.protectedText = protected
        algorithm = alg
        encryption = enc
        encryptedKey = try field("encrypted_key")
        iv = try field("iv")
        var ciphertext = try field("ciphertext")
        var tag = members["tag"] == nil && layout == .legacy ? [] : try field("tag")
        if layout == .legacy, tag.isEmpty {
            guard ciphertext.count >= 16 else { throw JWEError("the ciphertext is shorter than a GCM tag") }
            tag = Array(ciphertext.suffix(16))
            ciphertext.removeLast(16)
        }
        guard iv.count == 12 else { throw JWEError("the IV is \(iv.count) bytes, A256GCM needs 12") }
        guard tag.count == 16 else { throw JWEError("the tag is \(tag.count) bytes, A256GCM needs 16") }
        self.ciphertext = ciphertext
        self.tag = tag
    }

    /// The plaintext, decrypted with the TEE key, as a ``Secret``.
    public func decrypt(with key: TEEKey) throws(JWEError) -> Secret {
        let cek = try key.unwrapContentKey(alg: algorithm, encryptedKey: encryptedKey, header: header)
        let aad: [UInt8] = layout == .legacy ? [] : Array(protectedText.utf8)
        do {
            let box = try AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: iv), ciphertext: ciphertext, tag: tag)
            var plain = try AES.GCM.open(box, using: cek, authenticating: aad)
            defer { wipeBytes(&plain) }
            return Secret(plain)
        } catch {
            throw JWEError("the resource does not authenticate (AES-GCM): it was altered or encrypted for another session")
        }
    }
}
