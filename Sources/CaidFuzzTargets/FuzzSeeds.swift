import Attestation
import AttestationService
import Crypto
import Foundation
import Gocryptfs
import _CryptoExtras
import RATLS

/// Seeds that must be made with the fuzz targets' fixed keys or with caid's own encoders (encrypted blocks and
/// names, attested certificates, signed tokens). `caid-fuzz seeds <dir>` writes them into Fuzz/corpus; the other
/// seeds there are real samples kept as files.
public enum FuzzSeeds {
    /// (target, file name, bytes).
    public static func generated() throws -> [(target: String, name: String, bytes: [UInt8])] {
        var seeds: [(String, String, [UInt8])] = []

        // Content: a header and two blocks, the second short, as caid's writer makes them.
        let fileID = [UInt8](repeating: 0x11, count: 16)
        var file = ContentCipher.header(fileID: fileID)
        for (number, size) in [(UInt64(0), ContentCipher.plainBlockSize), (1, 100)] {
            let plain = [UInt8](repeating: UInt8(number), count: size)
            file += plain.withUnsafeBytes {
                FuzzKeys.content.encryptBlock($0, number: number, fileID: fileID, nonce: ArraySlice(repeating: 0x22 &+ UInt8(number), count: 16))
            }
        }
        seeds.append(("content", "two-blocks", file))
        seeds.append(("content", "header-only", ContentCipher.header(fileID: fileID)))

        // Names: the directory IV, then an encrypted name; a long name as entry and `.name` content; a symlink.
        let iv = [UInt8](repeating: 0x33, count: 16)
        if let modern = FuzzKeys.modernNames, let older = FuzzKeys.olderNames {
            seeds.append(("names", "modern", iv + Array(try modern.encrypt(Array("model-00001.safetensors".utf8), iv: iv).utf8)))
            seeds.append(("names", "older", iv + Array(try older.encrypt(Array("tokenizer.json".utf8), iv: NameCipher.zeroIV).utf8)))
            let long = try modern.encrypt([UInt8](repeating: 0x61, count: 200), iv: iv)
            seeds.append(("names", "long-name", iv + Array("\(NameCipher.longName(for: long))\n\(long)".utf8)))
        }
        seeds.append(("names", "symlink", iv + Array(FuzzKeys.content.encryptSymlinkTarget(Array("../shared/config.json".utf8)).utf8)))

        // RA-TLS: the evidence extension for the fixed key, in both forms, and whole certificates.
        let claims = FuzzGateway.claims
        let evidence = SampleAttester().evidence(reportData: RATLSEvidence.reportData(claims: claims), gpuEvidence: nil)
        let tagged = RATLSEvidence.tagged(tee: "sample", evidence: evidence.canonicalBytes, claims: claims)
        seeds.append(("ratls-evidence", "background-check", tagged))
        seeds.append(("ratls-evidence", "passport", RATLSEvidence.taggedToken(try earToken(), claims: claims)))
        seeds.append(("cbor", "evidence", tagged))
        seeds.append(("cbor", "claims", claims))
        let now = FuzzGateway.now
        seeds.append(("ratls-cert", "background-check", try AttestedCertificate.make(attester: SampleAttester(), now: now).der))
        let draft = try AttestedCertificate.draft(attester: SampleAttester())
        seeds.append(("ratls-cert", "passport", try AttestedCertificate.passport(draft, token: try earToken(), now: now).der))

        // AS tokens, both kinds, valid for the fixed key and time.
        seeds.append(("as-token", "ear-es256", Array(try earToken().utf8)))
        seeds.append(("as-token", "simple-rs384", Array(try simpleToken().utf8)))
        return seeds
    }

    /// The generated seeds that the product does not accept as valid: empty when every one reaches the end of
    /// its parser (decrypts, verifies), so the fuzzer starts from inputs that pass every check.
    public static func notAccepted() throws -> [String] {
        var problems: [String] = []
        let runtimeData = RATLSEvidence.runtimeData(claims: FuzzGateway.claims)
        let spki = FuzzGateway.subjectPublicKeyInfo
        for seed in try generated() {
            let accepted: Bool
            switch (seed.target, seed.name) {
            case ("content", "two-blocks"):
                let id = try ContentCipher.fileID(fromHeader: seed.bytes.prefix(ContentCipher.headerSize))
                let blocks = Array(seed.bytes.dropFirst(ContentCipher.headerSize))
                accepted = blocks.withUnsafeBytes { all in
                    (try? FuzzKeys.content.decryptBlock(UnsafeRawBufferPointer(rebasing: all[0..<ContentCipher.cipherBlockSize]), number: 0, fileID: id, holes: .refuse)) != nil
                        && (try? FuzzKeys.content.decryptBlock(UnsafeRawBufferPointer(rebasing: all[ContentCipher.cipherBlockSize...]), number: 1, fileID: id, holes: .refuse)) != nil
                }
            case ("names", "modern"):
                accepted = (try? FuzzKeys.modernNames?.decrypt(String(decoding: seed.bytes.dropFirst(16), as: UTF8.self), iv: Array(seed.bytes.prefix(16)))) != nil
            case ("names", "older"):
                accepted = (try? FuzzKeys.olderNames?.decrypt(String(decoding: seed.bytes.dropFirst(16), as: UTF8.self), iv: NameCipher.zeroIV)) != nil
            case ("names", "symlink"):
                accepted = (try? FuzzKeys.content.decryptSymlinkTarget(String(decoding: seed.bytes.dropFirst(16), as: UTF8.self))) != nil
            case ("ratls-evidence", "background-check"):
                accepted = (try? RATLSEvidence.verify(extensionValue: seed.bytes, subjectPublicKeyInfo: spki)) != nil
            case ("ratls-evidence", "passport"):
                accepted = (try? RATLSEvidence.verifyToken(extensionValue: seed.bytes, subjectPublicKeyInfo: spki)) != nil
            case ("ratls-cert", _):
                accepted = (try? PeerVerifier.checkCertificate(seed.bytes, now: FuzzGateway.now)) != nil
                    || seed.name == "passport"  // a passport certificate is checked by its token, not its evidence
            case ("as-token", _):
                accepted = (try? TokenVerifier.verify(
                    String(decoding: seed.bytes, as: UTF8.self), runtimeData: runtimeData, policyIDs: FuzzGateway.policyIDs, now: FuzzGateway.now)) != nil
            default:
                accepted = true
            }
            if !accepted { problems.append("\(seed.target)/gen-\(seed.name)") }
        }
        return problems
    }

    static func jwt(header: JSONValue, claims: JSONValue, sign: ([UInt8]) throws -> [UInt8]) rethrows -> String {
        let input = Base64.url(header.canonicalBytes) + "." + Base64.url(claims.canonicalBytes)
        return input + "." + Base64.url(try sign(Array(input.utf8)))
    }

    static var validity: (JSONValue, JSONValue) {
        let now = Int(FuzzGateway.now.timeIntervalSince1970)
        return (.integer(Int64(now + 3600)), .integer(Int64(now - 60)))
    }

    /// An EAR token as Trustee's AS signs it (ES256, `jwk` in the header), affirming, for the fixed key.
    static func earToken() throws -> String {
        let key = P256.Signing.PrivateKey()
        let raw = Array(key.publicKey.rawRepresentation)
        let jwk: JSONValue = ["kty": "EC", "crv": "P-256", "x": .string(Base64.url(Array(raw.prefix(32)))), "y": .string(Base64.url(Array(raw.suffix(32))))]
        let (exp, nbf) = validity
        let claims: JSONValue = [
            "eat_profile": "tag:github.com,2024:confidential-containers/Trustee", "exp": exp, "nbf": nbf,
            "submods": ["cpu0": [
                "ear.status": "affirming", "ear.appraisal-policy-id": "default",
                "ear.veraison.annotated-evidence": ["runtime_data_claims": RATLSEvidence.runtimeData(claims: FuzzGateway.claims)],
            ]],
        ]
        return try jwt(header: ["alg": "ES256", "typ": "JWT", "jwk": jwk], claims: claims) { Array(try key.signature(for: $0).rawRepresentation) }
    }

    /// A "simple" token as Trustee up to 1.5.x signs it (RS384, `jwk` in the header).
    static func simpleToken() throws -> String {
        let key = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let primitives = try key.publicKey.getKeyPrimitives()
        let jwk: JSONValue = ["kty": "RSA", "alg": "RS384", "n": .string(Base64.url(Array(primitives.modulus))), "e": .string(Base64.url(Array(primitives.publicExponent)))]
        let (exp, nbf) = validity
        let claims: JSONValue = [
            "exp": exp, "nbf": nbf, "customized_claims": ["runtime_data": RATLSEvidence.runtimeData(claims: FuzzGateway.claims)],
            "evaluation-reports": .array([["policy-id": "default", "evaluation-result": "success"]]),
        ]
        return try jwt(header: ["alg": "RS384", "typ": "JWT", "jwk": jwk], claims: claims) {
            Array(try key.signature(for: SHA384.hash(data: $0), padding: .insecurePKCS1v1_5).rawRepresentation)
        }
    }
}
