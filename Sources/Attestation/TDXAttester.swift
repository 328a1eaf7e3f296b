import Foundation

/// TDX evidence through the kernel's configfs-tsm interface, the way the Confidential Containers attester gets it:
/// a fresh report directory, provider `tdx_guest`, 64 bytes of report data in, the quote out, `generation` checked
/// so that a concurrent writer cannot hand us a quote over someone else's data, and the directory removed.
public struct TDXAttester: Attester {
    /// Where configfs-tsm reports live.
    public static let defaultReportRoot = "/sys/kernel/config/tsm/report"
    /// The firmware's CC event log (ACPI CCEL table), replayed by the verifier against RTMR0–3.
    public static let defaultEventLog = "/sys/firmware/acpi/tables/data/CCEL"

    private let reportRoot: String
    private let eventLog: String
    /// The model measured into RTMR3 and its AA event log, sent with every quote; nil when caid measures nothing.
    public let measurements: RuntimeMeasurements?

    public init(reportRoot: String = Self.defaultReportRoot, eventLog: String = Self.defaultEventLog, measurements: RuntimeMeasurements? = nil) {
        self.reportRoot = reportRoot
        self.eventLog = eventLog
        self.measurements = measurements
    }

    public var tee: TEEType { .tdx }

    /// True when configfs-tsm is there (the provider is checked on each report).
    public static func isAvailable(reportRoot: String = defaultReportRoot) -> Bool {
        var info = stat()
        return stat(reportRoot, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
    }

    /// The TDX evidence JSON: `quote` and `cc_eventlog` (standard base64), plus `gpu_evidence` when given.
    public func evidence(reportData: [UInt8], gpuEvidence: JSONValue?) throws(AttestationError) -> JSONValue {
        guard reportData.count <= 64 else {
            throw AttestationError(.tee, "TDX report data is \(reportData.count) bytes; at most 64 fit")
        }
        let padded = reportData + [UInt8](repeating: 0, count: 64 - reportData.count)
        let firmware = try FileManager.default.contents(atPath: eventLog).map { table throws(AttestationError) in try CCEventLog.trim(Array(table)) }
        guard let measurements else { return evidence(quote: try quote(reportData: padded), firmware: firmware, log: nil, gpuEvidence: gpuEvidence) }
        // The quote and the log under one lock: an extend in between would make them disagree.
        return try measurements.withLog { log throws(AttestationError) in
            evidence(quote: try quote(reportData: padded), firmware: firmware, log: log, gpuEvidence: gpuEvidence)
        }
    }

    /// The evidence JSON from a quote, the trimmed CCEL (events and end flag) and the AA event log.
    func evidence(quote: [UInt8], firmware: [UInt8]?, log: AAEventLog?, gpuEvidence: JSONValue?) -> JSONValue {
        // No log at all: null, not "" (openanolis/trustee v1.7.8 and later parse an empty string and fail).
        var ccEventLog = JSONValue.null
        var members: [String: JSONValue] = ["quote": .string(Base64.standard(quote))]
        let records = log.map { $0.form == .tcg2 ? $0.tcg2Records : [] } ?? []
        if records.isEmpty {
            if let firmware { ccEventLog = .string(Base64.standard(firmware)) }
        } else {
            // The AAEL records go between the firmware's events and the end flag (guest-components
            // `attester/src/utils.rs` `read_eventlog` @ v0.21.0); without a CCEL, after the attester's own header.
            let events = firmware.map { Array($0.dropLast(CCEventLog.endFlag.count)) } ?? AAEventLog.headerWithoutCCEL
            ccEventLog = .string(Base64.standard(events + records + CCEventLog.endFlag))
        }
        members["cc_eventlog"] = ccEventLog
        if let log, log.form == .text { members["aa_eventlog"] = .string(log.textLog) }
        if let gpuEvidence { members["gpu_evidence"] = gpuEvidence }
        return .object(members)
    }

    /// A quote over exactly 64 bytes of report data. A race with another writer (generation > 1) is retried a
    /// few times with a fresh directory.
    public func quote(reportData: [UInt8]) throws(AttestationError) -> [UInt8] {
        var lastRace = ""
        for _ in 0..<3 {
            let entry = reportRoot + "/caid-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            guard mkdir(entry, 0o700) == 0 else {
                throw AttestationError(.tee, "cannot create the TSM report \(entry): \(String(cString: strerror(errno))); is configfs mounted and caid root?")
            }
            defer { rmdir(entry) }
            let provider = try read(entry, "provider")
            guard String(decoding: provider, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) == "tdx_guest" else {
                throw AttestationError(.tee, "the TSM report provider at \(reportRoot) is '\(String(decoding: provider.prefix(64), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))', not tdx_guest; this host is not a TDX guest")
            }
            try write(entry, "inblob", reportData)
            let quote = try read(entry, "outblob")
            let generationText = String(decoding: try read(entry, "generation"), as: UTF8.self)
            guard let generation = Int(generationText.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw AttestationError(.tee, "\(entry)/generation holds '\(generationText.prefix(32))', not a number")
            }
            if generation == 1 {
                guard !quote.isEmpty else { throw AttestationError(.tee, "\(entry)/outblob is empty: the TDX quote could not be generated (is the quote generation service running?)") }
                return quote
            }
            lastRace = "generation \(generation)"
        }
        throw AttestationError(.tee, "another process kept writing the TSM report at the same time (\(lastRace)); retried 3 times")
    }

    private func read(_ entry: String, _ name: String) throws(AttestationError) -> [UInt8] {
        let path = entry + "/" + name
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw AttestationError(.tee, "cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let count = chunk.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw AttestationError(.tee, "cannot read \(path): \(String(cString: strerror(errno)))")
            }
            if count == 0 { return out }
            out += chunk[0..<count]
            guard out.count <= 1 << 20 else { throw AttestationError(.tee, "\(path) is larger than 1 MiB") }
        }
    }

    private func write(_ entry: String, _ name: String, _ bytes: [UInt8]) throws(AttestationError) {
        let path = entry + "/" + name
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw AttestationError(.tee, "cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else {
            throw AttestationError(.tee, "cannot write \(path): \(written < 0 ? String(cString: strerror(errno)) : "short write")")
        }
    }
}
