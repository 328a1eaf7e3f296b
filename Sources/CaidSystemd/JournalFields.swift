import Logging

/// Builds the fields of one native journal entry from a swift-log event. Pure, so its format is testable.
public enum JournalFields {
    /// The syslog priority (0 emerg … 7 debug) journald and `<N>` prefixes use for a log level.
    public static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// A journal field name for a metadata key: upper case `[A-Z0-9_]`, prefixed `CAID_`, so `service` becomes
    /// `CAID_SERVICE` and `sl-service` becomes `CAID_SL_SERVICE`.
    public static func fieldName(_ key: String) -> String {
        var name = String(key.uppercased().map { character -> Character in
            character.isASCII && (character.isLetter || character.isNumber) ? character : "_"
        })
        while name.hasPrefix("_") { name.removeFirst() }
        if name.isEmpty { name = "FIELD" }
        return name.hasPrefix("CAID_") ? name : "CAID_" + name
    }

    /// The `NAME=value` fields of one entry. A message from one of caid's services starts with the service's name
    /// (`fetch: downloaded …`), as on stderr, so that plain `journalctl -u caid` says which service "starting" or
    /// "stopped" is about; `CAID_SERVICE` still carries it for filtering.
    public static func make(
        level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata,
        identifier: String, file: String, function: String, line: UInt
    ) -> [String] {
        var fields = [
            metadata["service"].map { "MESSAGE=\($0): \(message)" } ?? "MESSAGE=\(message)",
            "PRIORITY=\(priority(level))",
            "SYSLOG_IDENTIFIER=\(identifier)",
            "CODE_FILE=\(file)",
            "CODE_LINE=\(line)",
            "CODE_FUNC=\(function)",
        ]
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
            fields.append("\(fieldName(key))=\(value)")
        }
        return fields
    }
}
