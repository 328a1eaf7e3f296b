/// One finding about a configuration file, worded for the operator: where, which key, what is wrong and what to do.
///
/// Its description has the form `FILE:LINE: KEY: message`, the form compilers use, so editors can jump to it.
public struct ConfigDiagnostic: Sendable, Equatable, CustomStringConvertible {
    /// Whether caid can go on.
    public enum Severity: Sendable, Equatable {
        case warning
        case error
    }

    public var severity: Severity
    public var file: String
    /// 1-based; `nil` when the finding is about the whole file or a key that is missing.
    public var line: Int?
    public var key: String?
    public var message: String

    public init(_ severity: Severity, file: String, line: Int? = nil, key: String? = nil, message: String) {
        self.severity = severity
        self.file = file
        self.line = line
        self.key = key
        self.message = message
    }

    public var description: String {
        var text = file
        if let line { text += ":\(line)" }
        text += ": "
        if severity == .warning { text += "warning: " }
        if let key { text += "\(key): " }
        return text + message
    }
}

/// The configuration could not be used; ``diagnostics`` lists every problem found, errors and warnings.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var diagnostics: [ConfigDiagnostic]

    public init(diagnostics: [ConfigDiagnostic]) {
        self.diagnostics = diagnostics
    }

    /// The exit status for a configuration error (EX_CONFIG from sysexits.h); the unit does not restart on it.
    public static let exitCode: Int32 = 78

    public var description: String {
        diagnostics.map(\.description).joined(separator: "\n")
    }
}
