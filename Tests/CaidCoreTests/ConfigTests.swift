import CaidBase
import CaidConfiguration
import CaidTestSupport
import Foundation
import Logging
import Testing

@Suite struct ConfigTests {
    let secret = "S3cr3t-Value-That-Must-Not-Leak"

    func decode(_ text: String) -> (config: CaidConfig?, diagnostics: [ConfigDiagnostic]) {
        CaidConfig.decode(Array(text.utf8), file: "/etc/caid/cai.env")
    }

    /// The template with real-looking values in place of its placeholders.
    var valid: String {
        caiTemplate
            .replacingOccurrences(of: "<oss access key id>", with: "LTAI5tExample")
            .replacingOccurrences(of: "<oss access key secret>", with: secret)
    }

    @Test func decodesTheTemplateIntoTypedValues() throws {
        let (config, diagnostics) = decode(valid)
        let c = try #require(config)
        #expect(diagnostics.allSatisfy { $0.severity == .warning })
        #expect(c.trusteeURL.absoluteString == "http://alb-xxxxxxxxx.cn-beijing.alb.aliyuncsslb.com/xxxx/")
        #expect(c.modelKeyID == ResourceURI(repository: "default", type: "aliyun", tag: "model-decryption-key"))
        #expect(c.encryptionMethod == .gocryptfs)
        #expect(c.objectStorage.bucket == "bucket_name")
        #expect(c.objectStorage.prefix == "path_of_model_ciphertext")
        #expect(c.objectStorage.sessionToken == nil)
        #expect(c.objectStorage.secretAccessKey.withBytes { Array($0) } == Array(secret.utf8))
        #expect(c.sharingPeers.isEmpty)
        #expect(c.modelServicePort == 8080)
        #expect(c.modelMountPoint == "/tmp/model")
        #expect(c.healthSocket == "/run/caid/caid.sock")
        #expect(c.cacheDirectory == "/var/lib/caid")
        #expect(c.attester == .auto)
        // The template's xxxx placeholders are pointed out, not refused.
        #expect(diagnostics.contains { $0.key == "TRUSTEE_URL" && $0.message.contains("placeholder") })
    }

    @Test func theVerbatimTemplateOnlyWarns() {
        let (config, diagnostics) = decode(caiTemplate)
        #expect(config != nil)
        #expect(diagnostics.contains { $0.key == "MODEL_OSS_ACCESS_KEY_ID" && $0.severity == .warning })
    }

    @Test(arguments: [
        ("TRUSTEE_URL", "\"ftp://example.com\"", "http:// or https://"),
        ("TRUSTEE_URL", "\"\"", "empty"),
        ("MODEL_KEY_ID", "\"kbs:///default/aliyun\"", "3"),
        ("MODEL_KEY_ID", "\"https://example.com/key\"", "kbs://"),
        ("MODEL_ENCRYPTION_METHOD", "\"sam\"", "closed format"),
        ("MODEL_ENCRYPTION_METHOD", "\"rot13\"", "expected \"gocryptfs\""),
        ("MODEL_OSS_BUCKET_PATH", "\"no-colon\"", "bucket:/path"),
        ("MODEL_OSS_BUCKET_PATH", "\":/path\"", "bucket name"),
        ("MODEL_OSS_ENDPOINT", "\"https://\"", "with a host"),
        ("MODEL_SHARING_PEER", "\"10.0.0.1 not-an-ip\"", "not an IP address"),
        ("MODEL_SERVICE_PORT", "0", "1 to 65535"),
        ("MODEL_SERVICE_PORT", "http", "1 to 65535"),
        ("MODEL_MOUNT_POINT", "tmp/model", "absolute"),
        ("CAID_HEALTH_SOCKET", "run/caid.sock", "absolute"),
        ("CAID_ATTESTER", "sgx", "auto, tdx or sample"),
        ("CAID_LOG_LEVEL", "loud", "log level"),
    ])
    func badValueNamesFileLineAndKey(key: String, value: String, fragment: String) throws {
        let lines = valid.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var text = lines.filter { !$0.hasPrefix(key + "=") }.joined(separator: "\n")
        text += "\(key)=\(value)\n"
        let badLine = text.split(separator: "\n", omittingEmptySubsequences: false).count - 1
        let (config, diagnostics) = decode(text)
        #expect(config == nil)
        let error = try #require(diagnostics.first { $0.severity == .error })
        #expect(error.key == key)
        #expect(error.line == badLine)
        #expect(error.message.contains(fragment))
        #expect(error.description.hasPrefix("/etc/caid/cai.env:\(badLine): \(key): "))
    }

    @Test func missingRequiredKeysAreErrors() {
        let (config, diagnostics) = decode("TRUSTEE_POLICY=\"default\"\n")
        #expect(config == nil)
        let missing = Set(diagnostics.filter { $0.severity == .error }.compactMap(\.key))
        #expect(missing == [
            "TRUSTEE_URL", "MODEL_KEY_ID", "MODEL_OSS_BUCKET_PATH", "MODEL_OSS_ENDPOINT", "MODEL_OSS_ACCESS_KEY_ID",
            "MODEL_OSS_SECRET_ACCESS_KEY",
        ])
    }

    @Test func gatewayTimingDefaultsAndAShortHandshakeWarning() throws {
        let defaults = try #require(decode(valid).config).gateway
        #expect(defaults.firstBytesTimeout == .seconds(10))
        #expect(defaults.handshakeTimeout == .seconds(60))
        #expect(defaults.idleTimeout == .seconds(600))
        #expect(defaults.maxStreams == 200)
        let (config, diagnostics) = decode(valid + "CAID_GATEWAY_FIRST_BYTES_TIMEOUT=\"3\"\nCAID_GATEWAY_HANDSHAKE_TIMEOUT=\"10\"\n")
        let gateway = try #require(config).gateway
        #expect(gateway.firstBytesTimeout == .seconds(3))
        #expect(gateway.handshakeTimeout == .seconds(10))
        #expect(diagnostics.contains { $0.key == "CAID_GATEWAY_HANDSHAKE_TIMEOUT" && $0.severity == .warning && $0.message.contains("inside the TLS handshake") })
    }

    @Test func gatewayAttestationModel() throws {
        #expect(try #require(decode(valid).config).gateway.attestationModel == .backgroundCheck)
        #expect(try #require(decode(valid + "CAID_GATEWAY_ATTESTATION_MODEL=\"passport\"\n").config).gateway.attestationModel == .passport)
        // TNG's own spelling.
        #expect(try #require(decode(valid + "CAID_GATEWAY_ATTESTATION_MODEL=\"background_check\"\n").config).gateway.attestationModel == .backgroundCheck)
        let (config, diagnostics) = decode(valid + "CAID_GATEWAY_ATTESTATION_MODEL=\"token\"\n")
        #expect(config == nil)
        #expect(diagnostics.contains { $0.key == "CAID_GATEWAY_ATTESTATION_MODEL" && $0.severity == .error && $0.message.contains("passport") })
    }

    @Test func unknownKeysAreWarnings() throws {
        let (config, diagnostics) = decode(valid + "SOMETHING_ELSE=1\nCAID_FUTURE=2\n")
        #expect(config != nil)
        let unknown = diagnostics.filter { $0.key == "SOMETHING_ELSE" || $0.key == "CAID_FUTURE" }
        #expect(unknown.count == 2 && unknown.allSatisfy { $0.severity == .warning && $0.line != nil })
    }

    @Test func peersTokenAndCaidSettings() throws {
        let text = valid.replacingOccurrences(of: "MODEL_OSS_SESSION_TOKEN=", with: "MODEL_OSS_SESSION_TOKEN=\"sts-token\"")
            + "MODEL_SHARING_PEER=\"172.30.0.11 172.30.0.12 fd00::1\"\nCAID_ATTESTER=sample\nCAID_LOG_LEVEL=debug\n"
            + "CAID_CACHE_DIR=/srv/caid\n"
        let c = try #require(decode(text).config)
        #expect(c.sharingPeers == ["172.30.0.11", "172.30.0.12", "fd00::1"])
        #expect(c.objectStorage.sessionToken?.count == 9)
        #expect(c.attester == .sample)
        #expect(c.logLevel == .debug)
        #expect(c.cacheDirectory == "/srv/caid")
    }

    @Test func secretsNeverAppearInDiagnosticsOrSummary() throws {
        // A broken secret line and a broken token line: the errors name them but never echo them.
        let text = valid.replacingOccurrences(of: "MODEL_OSS_SESSION_TOKEN=", with: "MODEL_OSS_SESSION_TOKEN=\"\(secret)x")
            + "MODEL_SERVICE_PORT_TYPO=\(secret)\n"
        let (_, diagnostics) = decode(text)
        #expect(!diagnostics.isEmpty)
        #expect(!diagnostics.map(\.description).joined().contains(secret))

        let c = try #require(decode(valid).config)
        let summary = c.redactedSummary.map { "\($0.key)=\($0.value)" }.joined(separator: "\n")
        #expect(!summary.contains(secret))
        #expect(summary.contains("MODEL_OSS_SECRET_ACCESS_KEY=<redacted>"))
        #expect("\(c.objectStorage.secretAccessKey)" == "<redacted>")
    }

    @Test func loadWarnsAboutAReadableFileAndNamesUnreadableOnes() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let open = try dir.write("open.env", valid, mode: 0o644)
        let (_, warnings) = try CaidConfig.load(path: open)
        #expect(warnings.contains { $0.message.contains("chmod 600") })

        let closed = try dir.write("closed.env", valid, mode: 0o600)
        #expect(try !CaidConfig.load(path: closed).warnings.contains { $0.message.contains("chmod") })

        #expect {
            try CaidConfig.load(path: dir.path + "/missing.env")
        } throws: { error in
            "\(error)".contains("missing.env") && "\(error)".contains("cannot be read")
        }
    }
}

@Suite struct SecretTests {
    @Test func wipeClearsAndTextIsRedacted() {
        let secret = Secret(Array("password".utf8))
        #expect(secret.count == 8)
        #expect("\(secret)" == "<redacted>" && String(reflecting: secret) == "Secret(<redacted>)")
        secret.wipe()
        #expect(secret.isEmpty)
        #expect(secret.withBytes { Array($0) } == [])
    }

    @Test func wipeBytesZeroesInPlace() {
        var bytes = Array("hunter2".utf8)
        wipeBytes(&bytes)
        #expect(bytes == [UInt8](repeating: 0, count: 7))
    }
}
