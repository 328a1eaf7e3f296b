import CaidSystemd
import Logging
import Testing

@Suite struct JournalFieldsTests {
    @Test func priorities() {
        #expect(Logger.Level.allCases.map(JournalFields.priority) == [7, 7, 6, 5, 4, 3, 2])
    }

    @Test(arguments: [
        ("service", "CAID_SERVICE"), ("sl-service", "CAID_SL_SERVICE"), ("CAID_OBJECT", "CAID_OBJECT"),
        ("_private", "CAID_PRIVATE"), ("größe", "CAID_GR_SSE"), ("", "CAID_FIELD"),
    ])
    func fieldNames(key: String, field: String) {
        #expect(JournalFields.fieldName(key) == field)
        #expect(field.allSatisfy { $0.isASCII && ($0.isUppercase || $0.isNumber || $0 == "_") })
    }

    @Test func entryFields() {
        let fields = JournalFields.make(
            level: .warning, message: "fetch slow\nsecond line", metadata: ["service": "fetch", "object": "model.bin"],
            identifier: "caid", file: "ObjectStore/Fetcher.swift", function: "run()", line: 42)
        #expect(fields == [
            "MESSAGE=fetch: fetch slow\nsecond line", "PRIORITY=4", "SYSLOG_IDENTIFIER=caid",
            "CODE_FILE=ObjectStore/Fetcher.swift", "CODE_LINE=42", "CODE_FUNC=run()",
            "CAID_OBJECT=model.bin", "CAID_SERVICE=fetch",
        ])
    }

    /// Plain `journalctl -u caid` shows MESSAGE only: a service's "starting" must say which service.
    @Test func messageNamesTheServiceOnlyWhenThereIsOne() {
        let service = JournalFields.make(
            level: .info, message: "starting", metadata: ["service": "cachefs"], identifier: "caid", file: "f", function: "g", line: 1)
        #expect(service.first == "MESSAGE=cachefs: starting")
        let daemon = JournalFields.make(level: .info, message: "caid stopped", metadata: [:], identifier: "caid", file: "f", function: "g", line: 1)
        #expect(daemon.first == "MESSAGE=caid stopped")
    }
}
