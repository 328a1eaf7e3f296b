import Attestation
import CaidBase
import Crypto
import Foundation
import _CryptoExtras

/// The ephemeral key pair the KBS encrypts the resource to. Its public half goes into the attestation and is
/// bound into the TEE evidence; the private half never leaves this process.
public struct TEEKey: Sendable {
    /// The key-wrap algorithm, named as in the JWK's `alg`.
    public enum Algorithm: String, Sendable, CaseIterable {
        /// RSA-2048, PKCS#1 v1.5: the only one the legacy KBS accepts.
        case rsa1_5 = "RSA1_5"
        /// RSA-2048, OAEP with SHA-256 and MGF1-SHA-256.
        case rsaOAEP256 = "RSA-OAEP-256"
        /// P-256 ECDH-ES with AES-256 key wrap: the 0.4.0 default.
        case ecdhES_A256KW = "ECDH-ES+A256KW"
    }

    // The RSA key is not marked Sendable by swift-crypto; it is never mutated after creation and BoringSSL's
    // private-key operations lock what they share (blinding), so sharing it between tasks is safe.
    private enum Private: @unchecked Sendable {
        case rsa(_RSA.Encryption.PrivateKey)
        case p256(P256.KeyAgreement.PrivateKey)
    }

    public let algorithm: Algorithm
    private let key: Private

    /// A fresh key for `algorithm`.
    public init(_ algorithm: Algorithm) throws {
        self.algorithm = algorithm
        switch algorithm {
        case .rsa1_5, .rsaOAEP256: key = .rsa(try _RSA.Encryption.PrivateKey(keySize: .bits2048))
        case .ecdhES_A256KW: key = .p256(P256.KeyAgreement.PrivateKey())
        }
    }

    /// The public JWK with exactly the members the KBS keeps (RSA `alg,e,kty,n`; EC `alg,crv,kty,x,y`): the
    /// binding hashes this object, so an extra member would break it.
    public var publicJWK: JSONValue {
        switch key {
        case .rsa(let rsa):
            // getKeyPrimitives cannot fail for a key we generated; an empty value would fail the KBS's own check.
            let primitives = try? rsa.publicKey.getKeyPrimitives()
            return [
                "kty": "RSA", "alg": .string(algorithm.rawValue),
                "n": .string(Base64.url(primitives?.modulus ?? Data())),
                "e": .string(Base64.url(primitives?.publicExponent ?? Data())),
            ]
        case .p256(let p256):
            let raw = Array(p256.publicKey.rawRepresentation)
            return [
                "kty": "EC", "crv": "P-256", "alg": .string(algorithm.rawValue),
                "x": .string(Base64.url(raw[0..<32])), "y": .string(Base64.url(raw[32..<64])),
            ]
        }
    }

    /// Recovers the 32-byte content-encryption key of a JWE.
    func unwrapContentKey(alg: String, encryptedKey: [UInt8], header: [String: JSONValue]) throws(JWEError) -> SymmetricKey {
        guard alg == algorithm.rawValue else {
            throw JWEError("the KBS wrapped the key with \(alg), but caid's TEE key is \(algorithm.rawValue)")
        }
        switch key {
        case .rsa(let rsa):
            let padding: _RSA.Encryption.Padding = algorithm == .rsa1_5 ? ._WEAK_AND_INSECURE_PKCS_V1_5 : .PKCS1_OAEP_SHA256
            guard var cek = try? rsa.decrypt(encryptedKey, padding: padding) else {
                throw JWEError("the encrypted key does not decrypt with caid's TEE key (\(alg))")
            }
            defer { wipeBytes(&cek) }
            guard cek.count == 32 else { throw JWEError("the content key is \(cek.count) bytes, A256GCM needs 32") }
            return SymmetricKey(data: cek)
        case .p256(let p256):
            guard case .object(let epk)? = header["epk"], epk["kty"]?.stringValue == "EC", epk["crv"]?.stringValue == "P-256",
                let x = epk["x"]?.stringValue.flatMap(Base64.decodeURL), let y = epk["y"]?.stringValue.flatMap(Base64.decodeURL),
                x.count == 32, y.count == 32,
                let ephemeral = try? P256.KeyAgreement.PublicKey(rawRepresentation: x + y)
            else { throw JWEError("the protected header has no valid P-256 'epk'") }
            guard let shared = try? p256.sharedSecretFromKeyAgreement(with: ephemeral) else {
                throw JWEError("ECDH with the KBS's ephemeral key failed")
            }
            let kek = shared.withUnsafeBytes { ConcatKDF.derive(sharedSecret: $0, algorithm: alg, keyBits: 256) }
            guard let cek = try? AES.KeyWrap.unwrap(encryptedKey, using: kek) else {
                throw JWEError("AES key unwrap failed: the KBS encrypted to another key")
            }
            return cek
        }
    }
}

/// NIST SP 800-56A Concat KDF as RFC 7518 §4.6.2 uses it, with empty PartyUInfo and PartyVInfo.
enum ConcatKDF {
    static func derive(sharedSecret: UnsafeRawBufferPointer, algorithm: String, keyBits: UInt32) -> SymmetricKey {
        var output: [UInt8] = []
        output.reserveCapacity(Int(keyBits / 8) + SHA256.byteCount)  // no regrowth leaving key bytes behind
        var counter: UInt32 = 1
        while output.count * 8 < keyBits {
            var hash = SHA256()
            hash.update(data: bigEndian(counter))
            hash.update(bufferPointer: sharedSecret)
            let name = Array(algorithm.utf8)
            hash.update(data: bigEndian(UInt32(name.count)) + name)
            hash.update(data: bigEndian(0) + bigEndian(0) + bigEndian(keyBits))
            output += hash.finalize()
            counter += 1
        }
        defer { wipeBytes(&output) }
        return SymmetricKey(data: output.prefix(Int(keyBits / 8)))
    }

    private static func bigEndian(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)]
    }
}
