import CaidTestSupport
import Foundation
import RATLS
import Testing

/// Attestation Service tokens checked against the operator's trusted certificates (`--token-cert`,
/// `CAID_TOKEN_CERTS`), with tokens and certificates made by other tools: openssl for the PKI, jwcrypto for the JWT.
@Suite(.serialized) struct TokenTrustTests {
    /// A CA, a P-256 signing certificate it issued, and an unrelated CA.
    static func pki(_ dir: TemporaryDirectory) throws -> (ca: String, other: String, leaf: String, key: String) {
        let p = dir.path
        let ext = try dir.write("leaf.cnf", "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n")
        for command in [
            ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", p + "/ca-key.pem", "-out", p + "/ca.pem", "-subj", "/CN=Trustee token CA", "-days", "2"],
            ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", p + "/other-key.pem", "-out", p + "/other.pem", "-subj", "/CN=another CA", "-days", "2"],
            ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", p + "/leaf-key.pem", "-out", p + "/leaf.csr", "-subj", "/CN=Attestation Service signer"],
            ["x509", "-req", "-in", p + "/leaf.csr", "-CA", p + "/ca.pem", "-CAkey", p + "/ca-key.pem", "-CAcreateserial", "-out", p + "/leaf.pem", "-days", "1", "-extfile", ext],
        ] {
            let result = try Programs.run("/usr/bin/env", ["openssl"] + command)
            guard result.status == 0 else { throw PeerProcess.Failure(description: "openssl failed: \(result.stderr)") }
        }
        return (p + "/ca.pem", p + "/other.pem", p + "/leaf.pem", p + "/leaf-key.pem")
    }

    /// An ES256 token signed with `key`, its header's jwk carrying `x5c` (base64url, no padding, as rats-cert reads it).
    static func token(key: String, chain: [String], headerKey: String? = nil) throws -> String {
        let script = """
            import base64, json, sys
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import Encoding
            from jwcrypto import jwk, jwt
            key = jwk.JWK.from_pem(open(sys.argv[1], "rb").read())
            shown = jwk.JWK.from_pem(open(sys.argv[2], "rb").read()) if sys.argv[2] != "-" else key
            x5c = [base64.urlsafe_b64encode(x509.load_pem_x509_certificate(open(p, "rb").read()).public_bytes(Encoding.DER)).rstrip(b"=").decode() for p in sys.argv[3:]]
            public = json.loads(shown.export_public())
            public["x5c"] = x5c
            token = jwt.JWT(header={"alg": "ES256", "typ": "JWT", "jwk": public}, claims={"exp": 4102444800})
            token.make_signed_token(key)
            print(token.serialize())
            """
        let result = try Programs.run("/usr/bin/env", ["python3", "-c", script, key, headerKey ?? "-"] + chain)
        guard result.status == 0 else { throw PeerProcess.Failure(description: "python failed: \(result.stderr)") }
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func aTokenCountsOnlyWhenItsSignerChainsToATrustedCertificate() async throws {
        let dir = try TemporaryDirectory("caid-token-trust")
        defer { dir.remove() }
        let pki = try Self.pki(dir)
        let token = try Self.token(key: pki.key, chain: [pki.leaf])

        try await TokenTrust(pemFiles: [pki.ca]).check(token)
        // Several files: one of them is enough.
        try await TokenTrust(pemFiles: [pki.other, pki.ca]).check(token)

        let untrusted = await #expect(throws: VerificationError.self) { try await TokenTrust(pemFiles: [pki.other]).check(token) }
        #expect(untrusted?.description.contains("does not chain to a trusted token certificate") == true)

        // A chain that names the right certificate, but the token was signed by another key.
        let forged = try Self.token(key: dir.path + "/other-key.pem", chain: [pki.leaf])
        let mismatch = await #expect(throws: VerificationError.self) { try await TokenTrust(pemFiles: [pki.ca]).check(forged) }
        #expect(mismatch?.description.contains("not signed by the key of its x5c certificate") == true)

        let bare = try Self.token(key: pki.key, chain: [])
        let none = await #expect(throws: VerificationError.self) { try await TokenTrust(pemFiles: [pki.ca]).check(bare) }
        #expect(none?.description.contains("no x5c certificate chain") == true)
    }

    @Test func unreadableAnchorsAreNamed() throws {
        let dir = try TemporaryDirectory("caid-token-trust")
        defer { dir.remove() }
        let missing = #expect(throws: VerificationError.self) { try TokenTrust(pemFiles: [dir.path + "/none.pem"]) }
        #expect(missing?.description.contains("none.pem") == true)
        let garbage = try dir.write("garbage.pem", "not a certificate")
        let bad = #expect(throws: VerificationError.self) { try TokenTrust(pemFiles: [garbage]) }
        #expect(bad?.description.contains("garbage.pem") == true)
    }
}
