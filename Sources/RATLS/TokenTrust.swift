import Attestation
import Crypto
import Foundation
import SwiftASN1
import X509
import _CryptoExtras

/// The operator's trust anchors for Attestation Service tokens (`CAID_TOKEN_CERTS`, `caid tunnel --token-cert`),
/// as TNG's `trusted_certs_paths`: a token counts only when its signing key is certified by one of them.
///
/// rats-cert (inclavare-containers/rats-rs, the revision TNG v2.2.6 pins, `rats-cert/src/tee/coco/verifier`) takes
/// the chain from the token header's `jwk.x5c` (base64url without padding), requires the header's key to be the
/// leaf's, and verifies the chain to a trusted certificate. caid does the same, and also accepts a top-level `x5c`
/// (RFC 7515 §4.1.6, standard base64). The signature itself is checked against the leaf's key, which proves the
/// leaf's key signed this token whatever `jwk` says.
public struct TokenTrust: Sendable {
    private let roots: [Certificate]
    /// The files the anchors came from, for messages.
    public let files: [String]

    /// - Throws: when a file cannot be read or holds no certificate.
    public init(pemFiles: [String]) throws(VerificationError) {
        var roots: [Certificate] = []
        for file in pemFiles {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw VerificationError("cannot read the trusted token certificate file \(file)")
            }
            do {
                let documents = try PEMDocument.parseMultiple(pemString: text)
                let certificates = try documents.map { try Certificate(pemDocument: $0) }
                guard !certificates.isEmpty else { throw VerificationError("\(file) holds no PEM certificate") }
                roots += certificates
            } catch let error as VerificationError {
                throw error
            } catch {
                throw VerificationError("\(file) is not a PEM certificate file: \(error)")
            }
        }
        self.roots = roots
        self.files = pemFiles
    }

    /// Checks `token` (already verified by ``TokenVerifier``) against the trusted certificates.
    public func check(_ token: String) async throws(VerificationError) {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let headerBytes = Base64.decodeURL(parts[0]), let signature = Base64.decodeURL(parts[2]),
            case .object(let header)? = try? JSONDecoder().decode(JSONValue.self, from: Data(headerBytes))
        else { throw VerificationError("the Attestation Service's token is not a JWT") }
        guard let chain = (header["jwk"]?["x5c"] ?? header["x5c"])?.arrayValue, !chain.isEmpty else {
            throw VerificationError("the token carries no x5c certificate chain, but trusted token certificates are set (\(files.joined(separator: ", "))): the Attestation Service must sign with a certified key")
        }
        var certificates: [Certificate] = []
        for (index, entry) in chain.enumerated() {
            guard let text = entry.stringValue, let der = Base64.decodeURL(text) ?? Base64.decodeStandard(text),
                let certificate = try? Certificate(derEncoded: der)
            else { throw VerificationError("x5c entry \(index) of the token is not a base64 DER certificate") }
            certificates.append(certificate)
        }
        let leaf = certificates[0]
        try Self.checkSignature(header: header, input: Array("\(parts[0]).\(parts[1])".utf8), signature: signature, leaf: leaf)

        var verifier = Verifier(rootCertificates: CertificateStore(roots)) { RFC5280Policy() }
        let result = await verifier.validate(leaf: leaf, intermediates: CertificateStore(Array(certificates.dropFirst())))
        guard case .validCertificate = result else {
            throw VerificationError("the token's signing certificate '\(leaf.subject)' does not chain to a trusted token certificate (\(files.joined(separator: ", ")))")
        }
    }

    private static func checkSignature(header: [String: JSONValue], input: [UInt8], signature: [UInt8], leaf: Certificate) throws(VerificationError) {
        switch header["alg"]?.stringValue {
        case "ES256":
            guard let key = P256.Signing.PublicKey(leaf.publicKey), let parsed = try? P256.Signing.ECDSASignature(rawRepresentation: signature),
                key.isValidSignature(parsed, for: input)
            else { throw VerificationError("the token was not signed by the key of its x5c certificate '\(leaf.subject)'") }
        case "RS384":
            guard let key = _RSA.Signing.PublicKey(leaf.publicKey),
                key.isValidSignature(_RSA.Signing.RSASignature(rawRepresentation: signature), for: SHA384.hash(data: input), padding: .insecurePKCS1v1_5)
            else { throw VerificationError("the token was not signed by the key of its x5c certificate '\(leaf.subject)'") }
        default:
            throw VerificationError("token algorithm \(header["alg"]?.stringValue ?? "none") cannot be checked against a certificate")
        }
    }
}
