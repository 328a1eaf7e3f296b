import CaidBase
/// A parser for environment files in the subset of systemd's `EnvironmentFile=` syntax that docker compose's
/// `--env-file` reads the same way, so that one `cai.env` feeds caid, the systemd unit and the old stack alike.
///
/// Accepted, per line: blank lines; comment lines starting with `#` or `;`; `KEY=value` where `KEY` is
/// `[A-Za-z_][A-Za-z0-9_]*`, with an unquoted value (trailing blanks dropped), a `"double-quoted"` value
/// (escapes `\"`, `\\`, `` \` ``, `\$` as systemd has them) or a `'single-quoted'` value (literal).
/// Rejected with the line number, because the two readers would disagree or the line is a mistake: `export`,
/// a line without `=`, a duplicate key, an unterminated quote, text after a closing quote, an unquoted value
/// with ` #` (a comment to docker, part of the value to systemd), a backslash in an unquoted value, invalid UTF-8.
///
/// The parser works on bytes and returns values as bytes so that secret values never pass through a `String`.
public enum EnvFile {
    /// One `KEY=value` assignment.
    public struct Entry: Sendable {
        public var key: String
        /// The value's bytes after unquoting. Wipe them once they have been copied where they belong.
        public var value: [UInt8]
        /// The 1-based line the assignment starts on.
        public var line: Int
    }

    /// A line that is not valid.
    public struct SyntaxError: Error, Sendable, Equatable {
        public var line: Int
        /// The key, when the line got that far.
        public var key: String?
        public var message: String
    }

    /// Parses a whole file.
    /// - Returns: the assignments in file order, and every syntax error found (parsing goes on after one).
    public static func parse(_ bytes: [UInt8]) -> (entries: [Entry], errors: [SyntaxError]) {
        var entries: [Entry] = []
        var errors: [SyntaxError] = []
        var firstLine: [String: Int] = [:]
        var start = 0
        var lineNumber = 0
        // A UTF-8 byte order mark from a Windows editor.
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { start = 3 }
        while start < bytes.count {
            lineNumber += 1
            var end = start
            while end < bytes.count, bytes[end] != UInt8(ascii: "\n") { end += 1 }
            var lineEnd = end
            if lineEnd > start, bytes[lineEnd - 1] == UInt8(ascii: "\r") { lineEnd -= 1 }
            switch parseLine(bytes[start..<lineEnd], line: lineNumber) {
            case .none:
                break
            case .entry(let entry):
                if let first = firstLine[entry.key] {
                    errors.append(SyntaxError(
                        line: lineNumber, key: entry.key,
                        message: "set a second time (first at line \(first)); keep one assignment"))
                } else {
                    firstLine[entry.key] = lineNumber
                    entries.append(entry)
                }
            case .error(let error):
                errors.append(error)
            }
            start = end + 1
        }
        return (entries, errors)
    }

    private enum LineResult {
        case none
        case entry(Entry)
        case error(SyntaxError)
    }

    private static func isBlank(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 }

    private static func parseLine(_ line: ArraySlice<UInt8>, line number: Int) -> LineResult {
        var i = line.startIndex
        while i < line.endIndex, isBlank(line[i]) { i += 1 }
        guard i < line.endIndex else { return .none }
        if line[i] == UInt8(ascii: "#") || line[i] == UInt8(ascii: ";") { return .none }
        guard isValidUTF8(line[i...]) else {
            return .error(SyntaxError(line: number, key: nil, message: "is not valid UTF-8; save the file as UTF-8"))
        }

        let keyStart = i
        while i < line.endIndex, line[i] != UInt8(ascii: "=") { i += 1 }
        var keyEnd = i
        while keyEnd > keyStart, isBlank(line[keyEnd - 1]) { keyEnd -= 1 }
        let rawKey = String(decoding: line[keyStart..<keyEnd], as: UTF8.self)
        guard i < line.endIndex else {
            return .error(SyntaxError(
                line: number, key: nil,
                message: "has no '=': expected KEY=value, or a comment line starting with '#'"))
        }
        if rawKey.hasPrefix("export ") || rawKey.hasPrefix("export\t") {
            return .error(SyntaxError(
                line: number, key: nil,
                message: "starts with 'export', which systemd's EnvironmentFile= does not accept; remove 'export'"))
        }
        guard isValidKey(rawKey) else {
            return .error(SyntaxError(
                line: number, key: nil,
                message: "'\(rawKey)' is not a valid key: use letters, digits and '_', not starting with a digit"))
        }
        i += 1  // past '='
        while i < line.endIndex, isBlank(line[i]) { i += 1 }

        // Sized once: a growing array would leave copies of a secret value behind in freed memory.
        var value: [UInt8] = []
        value.reserveCapacity(line.endIndex - i)
        guard i < line.endIndex else { return .entry(Entry(key: rawKey, value: [], line: number)) }
        let quote = line[i]
        if quote == UInt8(ascii: "\"") || quote == UInt8(ascii: "'") {
            i += 1
            var closed = false
            while i < line.endIndex {
                let byte = line[i]
                if byte == quote { closed = true; i += 1; break }
                if quote == UInt8(ascii: "\""), byte == UInt8(ascii: "\\") {
                    guard i + 1 < line.endIndex else { break }
                    let next = line[i + 1]
                    if [UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "`"), UInt8(ascii: "$")].contains(next) {
                        value.append(next)
                    } else {
                        value.append(byte)
                        value.append(next)
                    }
                    i += 2
                    continue
                }
                value.append(byte)
                i += 1
            }
            guard closed else {
                wipeBytes(&value)
                return .error(SyntaxError(
                    line: number, key: rawKey,
                    message: "has an unterminated quote; close it on the same line (values cannot span lines)"))
            }
            while i < line.endIndex, isBlank(line[i]) { i += 1 }
            if i < line.endIndex {
                wipeBytes(&value)
                return .error(SyntaxError(
                    line: number, key: rawKey,
                    message: "has text after the closing quote; put comments on their own line"))
            }
            return .entry(Entry(key: rawKey, value: value, line: number))
        }

        var end = line.endIndex
        while end > i, isBlank(line[end - 1]) { end -= 1 }
        value = Array(line[i..<end])
        if value.contains(UInt8(ascii: "\\")) {
            wipeBytes(&value)
            return .error(SyntaxError(
                line: number, key: rawKey,
                message: "has a backslash in an unquoted value; put the value in double quotes"))
        }
        if let hash = value.firstIndex(of: UInt8(ascii: "#")), hash > 0, isBlank(value[hash - 1]) {
            wipeBytes(&value)
            return .error(SyntaxError(
                line: number, key: rawKey,
                message: "has ' #' in an unquoted value, which systemd keeps and docker drops as a comment; "
                    + "quote the value or move the comment to its own line"))
        }
        return .entry(Entry(key: rawKey, value: value, line: number))
    }

    /// `true` when `bytes` are well-formed UTF-8, checked without making a `String` (which would copy a secret
    /// value where it cannot be wiped).
    static func isValidUTF8(_ bytes: ArraySlice<UInt8>) -> Bool {
        var parser = Unicode.UTF8.ForwardParser()
        var iterator = bytes.makeIterator()
        while true {
            switch parser.parseScalar(from: &iterator) {
            case .valid: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }

    /// `true` when `key` is a valid environment variable name.
    public static func isValidKey(_ key: String) -> Bool {
        guard let first = key.utf8.first, first == UInt8(ascii: "_") || isLetter(first) else { return false }
        return key.utf8.allSatisfy { $0 == UInt8(ascii: "_") || isLetter($0) || (0x30...0x39).contains($0) }
    }

    private static func isLetter(_ byte: UInt8) -> Bool { (0x41...0x5A).contains(byte) || (0x61...0x7A).contains(byte) }
}
