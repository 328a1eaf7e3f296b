import Attestation
import CaidBase
import CaidTestSupport
import Crypto
import Foundation
@testable import KBSProtocol
@testable import KeyBroker
import Testing

/// The canonical JSON, bindings and JWEs, checked against Trustee's own vectors and against Python's json,
/// `cryptography` and `jwcrypto` (Tests/peers/trustee_server.py --encrypt-for).
@Suite struct FormatTests {
    @Test func canonicalJSONMatchesTrusteeVector() {
        // trustee attestation-service/src/lib.rs tests: JCS {"a":"test","b":1,"c":{"d":"e"}} → SHA-384.
        let value: JSONValue = ["c": ["d": "e"], "b": .integer(1), "a": "test"]
        #expect(value.canonicalString == #"{"a":"test","b":1,"c":{"d":"e"}}"#)
        let digest = SHA384.hash(data: value.canonicalBytes).map { String(format: "%02x", $0) }.joined()
        #expect(digest == "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c4597480a186427c813ca941da78870c3")
    }

    @Test func canonicalJSONEscapesLikeSerdeAndKeepsSlashes() {
        let value: JSONValue = ["nonce": "ab/+c=", "q": "say \"hi\"\\\n\t\u{01}é"]
        #expect(value.canonicalString == #"{"nonce":"ab/+c=","q":"say \"hi\"\\\n\t\u0001é"}"#)
    }

    @Test func protectedHeaderVectorFromKbsTypes() {
        let header: JSONValue = ["alg": "fakealg", "enc": "fakeenc"]
        #expect(Base64.url(header.canonicalBytes) == "eyJhbGciOiJmYWtlYWxnIiwiZW5jIjoiZmFrZWVuYyJ9")
    }

    /// The binding for a nonce with `/` and `+`, computed by Python's json and hashlib as the server does.
    @Test(arguments: KBSDialect.allCases) func bindingMatchesPython(dialect: KBSDialect) throws {
        let key = try TEEKey(dialect == .legacy ? .rsa1_5 : .ecdhES_A256KW)
        let challenge = RCAR.Challenge(nonce: "q+/Zx8Tj4l3sWd/9mNbV0a+oPq1Rr2Ss3Tt4Uu5Vv6w=", hash: .sha384)
        let additional = dialect == .legacy ? "" : #"{"nvidia":{"device_evidence_list":[]}}"#
        let swift = RCAR.binding(dialect: dialect, challenge: challenge, publicKey: key.publicJWK, additionalEvidence: additional)
        let object: String = dialect == .legacy
            ? #"{"nonce": n, "tee-pubkey": k}"#
            : #"{"additional-evidence": a, "nonce": n, "tee-pubkey": k}"#
        let script = """
            import hashlib, json, sys
            n, k, a = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
            print(hashlib.sha384(json.dumps(\(object), sort_keys=True, separators=(",", ":")).encode()).hexdigest())
            """
        let result = try Programs.run("/usr/bin/env", ["python3", "-c", script, challenge.nonce, key.publicJWK.canonicalString, additional])
        #expect(result.status == 0, "\(result.stderr)")
        let python = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let hex = swift.map { String(format: "%02x", $0) }.joined()
        #expect(python == hex)
    }

    @Test func publicJWKHasExactlyTheMembersTheKBSKeeps() throws {
        for algorithm in TEEKey.Algorithm.allCases {
            guard case .object(let members) = try TEEKey(algorithm).publicJWK else { Issue.record("not an object"); continue }
            let expected: Set<String> = algorithm == .ecdhES_A256KW ? ["alg", "crv", "kty", "x", "y"] : ["alg", "e", "kty", "n"]
            #expect(Set(members.keys) == expected)
            #expect(members["alg"]?.stringValue == algorithm.rawValue)
            if algorithm != .ecdhES_A256KW {
                #expect(members["e"]?.stringValue == "AQAB")
                #expect(Base64.decodeURL(members["n"]?.stringValue ?? "")?.count == 256)
            }
        }
    }

    /// A JWE of `plaintext` for `key`, made by the test KBS's encoder in `layout`.
    static func encrypt(_ plaintext: [UInt8], for key: TEEKey, layout: String, in dir: TemporaryDirectory) throws -> [UInt8] {
        let jwk = try dir.write("jwk-\(UUID().uuidString).json", key.publicJWK.canonicalString)
        let plain = dir.path + "/plain-\(UUID().uuidString)"
        try Data(plaintext).write(to: URL(fileURLWithPath: plain))
        let result = try Programs.run("/usr/bin/env", [
            "python3", Programs.packageRoot + "/Tests/peers/trustee_server.py", "--encrypt-for", jwk, "--plaintext", plain, "--jwe-layout", layout,
        ])
        try #require(result.status == 0, "\(result.stderr)")
        return Array(result.stdout.utf8)
    }

    struct Case: Sendable, CustomStringConvertible {
        var algorithm: TEEKey.Algorithm
        var layout: String
        var expected: JWE.Layout
        var description: String { "\(algorithm.rawValue) \(layout)" }
    }

    static let cases: [Case] = [
        Case(algorithm: .rsa1_5, layout: "legacy", expected: .legacy),
        Case(algorithm: .rsa1_5, layout: "jwcrypto", expected: .rfc7516),
        Case(algorithm: .rsaOAEP256, layout: "jwcrypto", expected: .rfc7516),
        Case(algorithm: .ecdhES_A256KW, layout: "trustee", expected: .rfc7516),
        Case(algorithm: .ecdhES_A256KW, layout: "jwcrypto", expected: .rfc7516),
    ]

    @Test(arguments: cases) func jweRoundTrip(_ testCase: Case) throws {
        let dir = try TemporaryDirectory("caid-jwe")
        defer { dir.remove() }
        let key = try TEEKey(testCase.algorithm)
        let plaintext = Array("correct horse battery staple / ünïcode\n".utf8)
        let body = try Self.encrypt(plaintext, for: key, layout: testCase.layout, in: dir)
        let jwe = try JWE(parsing: body)
        #expect(jwe.layout == testCase.expected)
        let secret = try jwe.decrypt(with: key)
        #expect(secret.withBytes { Array($0) } == plaintext)
        #expect("\(secret)" == "<redacted>")

        // Another key of the same kind cannot open it.
        #expect(throws: JWEError.self) { try jwe.decrypt(with: try TEEKey(testCase.algorithm)) }

        // Any flipped ciphertext character fails authentication.
        var object = try #require(try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any])
        let ciphertext = try #require(object["ciphertext"] as? String)
        var characters = Array(ciphertext)
        characters[0] = characters[0] == "A" ? "B" : "A"
        object["ciphertext"] = String(characters)
        let tampered = Array(try JSONSerialization.data(withJSONObject: object))
        #expect(throws: JWEError.self) { try JWE(parsing: tampered).decrypt(with: key) }
    }

    @Test func rfcLayoutAuthenticatesTheProtectedHeader() throws {
        let dir = try TemporaryDirectory("caid-jwe")
        defer { dir.remove() }
        let key = try TEEKey(.ecdhES_A256KW)
        let body = try Self.encrypt(Array("secret".utf8), for: key, layout: "trustee", in: dir)
        var object = try #require(try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any])
        // The same header with a space after "{": the same parameters, but other AAD bytes, which GCM must refuse.
        let protected = try #require(object["protected"] as? String)
        let header = try #require(Base64.decodeURL(protected))
        object["protected"] = Base64.url([header[0], 0x20] + header.dropFirst())
        let tampered = Array(try JSONSerialization.data(withJSONObject: object))
        #expect(throws: JWEError.self) { try JWE(parsing: tampered).decrypt(with: key) }
    }

    @Test func passwordLosesOneTrailingNewlineOnly() {
        let cases: [(String, String)] = [("pw\n", "pw"), ("pw\n\n", "pw\n"), ("pw", "pw"), ("", ""), ("\n", "")]
        for (stored, expected) in cases {
            let resource = Secret(Array(stored.utf8))
            let password = ModelPassword.fromResource(resource)
            #expect(password.withBytes { String(decoding: $0, as: UTF8.self) } == expected)
            #expect(resource.isEmpty)
        }
    }

    @Test func cookieJarKeepsEveryCookieAndDropsExpiredOnes() {
        var jar = CookieJar()
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        jar.store(setCookie: ["SERVERID=r2; Path=/", "kbs-session-id=abc; Expires=Thu, 01 Jan 1970 00:00:10 GMT"], now: now)
        #expect(jar.header(now: now) == "SERVERID=r2")
        jar.store(setCookie: ["kbs-session-id=def; Max-Age=300"], now: now)
        #expect(jar.header(now: now) == "SERVERID=r2; kbs-session-id=def")
        #expect(jar.header(now: now.addingTimeInterval(301)) == "SERVERID=r2")
        jar.store(setCookie: ["SERVERID=r1"], now: now)
        #expect(jar.header(now: now) == "SERVERID=r1; kbs-session-id=def")
    }

    @Test func errorsKeepTheServersDetailAndClassify() {
        let mismatch = RCAR.failure(step: "auth", status: 401, body: Array(#"{"type":"x/ProtocolVersion","detail":"KBS Client Protocol Version Mismatch: expected version: <=0.1.0"}"#.utf8))
        #expect(mismatch.kind == .versionMismatch)
        #expect(mismatch.description.contains("expected version: <=0.1.0"))
        #expect(RCAR.failure(step: "auth", status: 400, body: Array("Json deserialize error: invalid type: map".utf8)).kind == .versionMismatch)
        #expect(RCAR.failure(step: "resource a/b/c", status: 403, body: Array(#"{"detail":"Policy deny"}"#.utf8)).kind == .denied)
        #expect(RCAR.failure(step: "resource a/b/c", status: 404, body: []).kind == .notFound)
        #expect(RCAR.failure(step: "attest", status: 500, body: Array("boom".utf8)).kind == .unavailable)
        #expect(RCAR.failure(step: "attest", status: 401, body: []).kind == .rejected)
        #expect(RCAR.failure(step: "resource a/b/c", status: 401, body: []).kind == .unauthorized)
    }

    /// What marks a Trustee without the `nvidia` verifier, and what does not (a proxy's 503, an unreachable server).
    @Test func onlyTrusteesOwnAnswersMarkAMissingGPUVerifier() {
        let typed = #"{"type":"https://github.com/confidential-containers/kbs/errors/AttestationError","detail":"Attestation error: RCAR handshake Attest failed"}"#
        #expect(RCAR.failure(step: "attest", status: 502, body: Array(typed.utf8)).marksMissingGPUVerifier)
        #expect(RCAR.failure(step: "attest", status: 500, body: Array(typed.utf8)).marksMissingGPUVerifier)
        #expect(!RCAR.failure(step: "attest", status: 401, body: Array(typed.utf8)).marksMissingGPUVerifier)
        #expect(!RCAR.failure(step: "attest", status: 503, body: Array("upstream unavailable".utf8)).marksMissingGPUVerifier)
        #expect(KBSError(.unavailable, step: "attest", detail: "cannot reach x: HTTPClientError.remoteConnectionClosed").marksMissingGPUVerifier)
        #expect(!KBSError(.unavailable, step: "attest", detail: "cannot reach x: connection refused").marksMissingGPUVerifier)
    }

    /// The bodies real Trustees answer (kbs/src/error.rs): the `type` variant decides, whatever the status.
    @Test(arguments: [
        // (status, variant, detail, step, kind): upstream answers 401 for nearly everything, openanolis 403/500/502.
        (401, "PolicyDeny", "Access denied by policy", "resource a/b/c", KBSError.Kind.denied),
        (403, "PolicyDeny", "Access denied by policy", "resource a/b/c", .denied),
        (401, "PluginInternalError", "Plugin internal error", "resource a/b/c", .notFound),
        (500, "PluginInternalError", "Plugin internal error", "resource a/b/c", .notFound),
        (404, "PluginNotFound", "Plugin foo not found", "resource a/b/c", .notFound),
        (401, "TokenNotFound", "Attestation Token not found", "resource a/b/c", .unauthorized),
        (401, "TokenVerifierError", "Token Verifier error", "resource a/b/c", .unauthorized),
        (401, "AttestationError", "Attestation error: RCAR handshake Attest failed", "attest", .rejected),
        (500, "AttestationError", "Attestation error: RCAR handshake Attest failed", "attest", .rejected),
        (502, "AttestationError", "Attestation error: RCAR handshake Attest failed", "attest", .rejected),
        (502, "AttestationError", "Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: expect =0.4.0 while the request is 0.1.0", "auth", .versionMismatch),
        (500, "PolicyEngine", "Policy engine error", "resource a/b/c", .unavailable),
    ])
    func trusteeErrorTypesClassifyBeforeStatus(status: Int, variant: String, detail: String, step: String, kind: KBSError.Kind) {
        let body = #"{"type":"https://github.com/confidential-containers/kbs/errors/\#(variant)","detail":"\#(detail)"}"#
        let error = RCAR.failure(step: step, status: status, body: Array(body.utf8))
        #expect(error.kind == kind)
        #expect(error.variant == variant)
        #expect(error.description.contains(variant))
        #expect(error.description.contains(detail))
    }

    /// Random and mutated input to every parser of data from the network: errors, never a crash.
    @Test func parsersSurviveGarbage() throws {
        let dir = try TemporaryDirectory("caid-jwe")
        defer { dir.remove() }
        let key = try TEEKey(.ecdhES_A256KW)
        let valid = try Self.encrypt(Array("x".utf8), for: key, layout: "trustee", in: dir)
        var generator = SystemRandomNumberGenerator()
        for round in 0..<3000 {
            var input: [UInt8]
            if round % 3 == 0 {
                input = (0..<Int.random(in: 0...200, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            } else {
                input = valid
                for _ in 0..<Int.random(in: 1...8, using: &generator) {
                    let index = Int.random(in: 0..<input.count, using: &generator)
                    switch Int.random(in: 0..<3, using: &generator) {
                    case 0: input[index] = UInt8.random(in: 0...255, using: &generator)
                    case 1: input.remove(at: index)
                    default: input.insert(Array("{}[]\":,0e".utf8).randomElement(using: &generator) ?? 0, at: index)
                    }
                    if input.isEmpty { break }
                }
            }
            _ = try? JWE(parsing: input).decrypt(with: key)
            _ = try? RCAR.parseChallenge(input)
            _ = try? RCAR.parseToken(input)
            _ = RCAR.failure(step: "auth", status: 400, body: input)
            _ = try? AttestationToken(parsing: String(decoding: input, as: UTF8.self))
            var jar = CookieJar()
            jar.store(setCookie: [String(decoding: input, as: UTF8.self)])
            _ = jar.header()
        }
    }
}
