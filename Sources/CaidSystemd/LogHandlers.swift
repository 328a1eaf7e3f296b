import CSystemd
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// A swift-log handler that writes native journal entries through `sd_journal_sendv`, with the fields of
/// ``JournalFields``, so `journalctl -u caid CAID_SERVICE=fetch` filters by service.
public struct JournalLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    private let identifier: String

    public init(identifier: String = "caid", level: Logger.Level) {
        self.identifier = identifier
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
        let fields = JournalFields.make(
            level: event.level, message: event.message, metadata: merged, identifier: identifier,
            file: event.file, function: event.function, line: event.line)
        // One buffer for all fields, and an iovec per field pointing into it.
        var bytes: [UInt8] = []
        var ranges: [Range<Int>] = []
        for field in fields {
            let start = bytes.count
            bytes.append(contentsOf: field.utf8)
            ranges.append(start..<bytes.count)
        }
        bytes.withUnsafeMutableBytes { buffer in
            guard let base = buffer.baseAddress else { return }
            let iovecs = ranges.map { iovec(iov_base: base + $0.lowerBound, iov_len: $0.count) }
            _ = sd_journal_sendv(iovecs, Int32(iovecs.count))
        }
    }
}

/// Plain lines on standard error with the `<N>` syslog priority prefix of `sd-daemon(3)`, for a terminal, a
/// container or tests: `<6>fetch: downloaded model.safetensors size=6.1GB`.
public struct StderrLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]

    public init(level: Logger.Level) {
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
        var line = "<\(JournalFields.priority(event.level))>"
        if let service = merged.removeValue(forKey: "service") { line += "\(service): " }
        line += "\(event.message)"
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) { line += " \(key)=\(value)" }
        line += "\n"
        // One write(2) per line, so lines from concurrent tasks do not interleave.
        var bytes = Array(line.utf8)
        _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    }
}

/// Chooses where caid's log goes.
public enum LogDestination {
    /// The journal when stderr is connected to it (`JOURNAL_STREAM` names stderr's device and inode, as systemd sets
    /// it for services), or when the journal socket exists and stderr is not a terminal; stderr otherwise.
    public static func useJournal() -> Bool {
        if let stream = getenv("JOURNAL_STREAM").map({ String(cString: $0) }) {
            let parts = stream.split(separator: ":")
            var info = stat()
            if parts.count == 2, fstat(2, &info) == 0,
                UInt64(parts[0]) == UInt64(info.st_dev), UInt64(parts[1]) == UInt64(info.st_ino) {
                return true
            }
        }
        return access("/run/systemd/journal/socket", F_OK) == 0 && isatty(2) == 0
    }

    /// Bootstraps swift-log once for the process.
    public static func bootstrap(level: Logger.Level) {
        let journal = useJournal()
        LoggingSystem.bootstrap { _ -> any LogHandler in
            if journal { return JournalLogHandler(level: level) }
            return StderrLogHandler(level: level)
        }
    }
}
