import CaidConfiguration
import CaidTestSupport
import Testing

@Suite struct EnvFileTests {
    func parse(_ text: String) -> (entries: [EnvFile.Entry], errors: [EnvFile.SyntaxError]) {
        EnvFile.parse(Array(text.utf8))
    }

    func values(_ text: String) -> [String: String] {
        Dictionary(uniqueKeysWithValues: parse(text).entries.map { ($0.key, String(decoding: $0.value, as: UTF8.self)) })
    }

    @Test func parsesTheCAITemplateVerbatim() {
        let (entries, errors) = parse(caiTemplate)
        #expect(errors.isEmpty)
        #expect(entries.map(\.key) == [
            "TRUSTEE_URL", "TRUSTEE_POLICY", "MODEL_KEY_ID", "MODEL_ENCRYPTION_METHOD", "MODEL_OSS_BUCKET_PATH",
            "MODEL_OSS_ENDPOINT", "MODEL_OSS_ACCESS_KEY_ID", "MODEL_OSS_SECRET_ACCESS_KEY", "MODEL_OSS_SESSION_TOKEN",
            "MODEL_SERVICE_PORT", "MODEL_MOUNT_POINT",
        ])
        let map = values(caiTemplate)
        #expect(map["TRUSTEE_URL"] == "http://alb-xxxxxxxxx.cn-beijing.alb.aliyuncsslb.com/xxxx/")
        #expect(map["MODEL_OSS_SESSION_TOKEN"] == "")
        #expect(map["MODEL_SERVICE_PORT"] == "8080")
        #expect(map["MODEL_SHARING_PEER"] == nil)
        #expect(entries.first { $0.key == "MODEL_MOUNT_POINT" }?.line == 24)
    }

    @Test(arguments: [
        ("A=plain value  ", "plain value"),
        ("A=\"double \\\"quoted\\\" \\\\ \\$HOME\"", "double \"quoted\" \\ $HOME"),
        ("A='single \\n $x'", "single \\n $x"),
        ("  A = spaced", "spaced"),
        ("A=\"\"", ""),
        ("A=\"keeps \\n as is\"", "keeps \\n as is"),
        ("A=a#b", "a#b"),
        ("A=ünïcødé-模型", "ünïcødé-模型"),
    ])
    func acceptedValue(line: String, expected: String) {
        let (entries, errors) = parse(line + "\n")
        #expect(errors.isEmpty)
        #expect(entries.first.map { String(decoding: $0.value, as: UTF8.self) } == expected)
    }

    @Test func acceptsCommentsBlankLinesCRLFAndBOM() {
        let text = "\u{FEFF}# comment\r\n; also a comment\r\n\r\n   \r\nA=1\r\nB=\"2\"\r\n"
        #expect(values(text) == ["A": "1", "B": "2"])
    }

    @Test(arguments: [
        ("export A=1", nil as String?, "export"),
        ("JUST_A_WORD", nil, "no '='"),
        ("1A=x", nil, "not a valid key"),
        ("A-B=x", nil, "not a valid key"),
        ("=x", nil, "not a valid key"),
        ("A=\"open", "A", "unterminated quote"),
        ("A='open", "A", "unterminated quote"),
        ("A=\"x\" trailing", "A", "after the closing quote"),
        ("A=8080 # port", "A", "' #'"),
        ("A=c:\\path", "A", "backslash"),
    ])
    func rejectedLine(line: String, key: String?, fragment: String) throws {
        let (entries, errors) = parse("# first line\n" + line + "\n")
        #expect(entries.isEmpty)
        let error = try #require(errors.first)
        #expect(error.line == 2)
        #expect(error.key == key)
        #expect(error.message.contains(fragment))
    }

    @Test func rejectsDuplicateKeysNamingTheFirstLine() throws {
        let (entries, errors) = parse("A=1\nB=2\nA=3\n")
        #expect(entries.count == 2)
        let error = try #require(errors.first)
        #expect(error.line == 3 && error.key == "A" && error.message.contains("line 1"))
    }

    @Test func rejectsInvalidUTF8() throws {
        let (_, errors) = EnvFile.parse(Array("A=1\nB=".utf8) + [0xFF, 0xFE] + Array("\n".utf8))
        #expect(try #require(errors.first).line == 2)
        #expect(errors.first?.message.contains("UTF-8") == true)
    }

    @Test func surviveArbitraryBytes() {
        // A crude fuzz: random bytes drawn from the characters the grammar cares about never crash the parser.
        let alphabet: [UInt8] = Array("AZ_az09=\"'\\#; \t\r\n$`".utf8) + [0xC3, 0xA9, 0xFF, 0x00]
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let bytes = (0..<Int.random(in: 0..<80, using: &generator)).map { _ in alphabet.randomElement(using: &generator)! }
            let (entries, errors) = EnvFile.parse(bytes)
            #expect(entries.allSatisfy { EnvFile.isValidKey($0.key) })
            #expect(errors.allSatisfy { $0.line >= 1 })
        }
    }
}
