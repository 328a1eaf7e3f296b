import Foundation
import Synchronization

/// The model measured into RTMR3 and the AA event log that lets a verifier replay it, kept consistent with the
/// register across caid restarts. One lock orders everything: an extend and the making of evidence never
/// interleave, so a quote and the log sent with it always agree.
///
/// The log lives in a file under /run (tmpfs: gone at reboot, exactly when RTMR3 returns to zero) outside caid's
/// RuntimeDirectory, which systemd removes at every stop. Each new event is written to the file before the register
/// is extended, so a crash in between leaves a log one event ahead, which the next start completes.
public final class RuntimeMeasurements: Sendable {
    /// What ``measure(modelDigest:modelID:)`` did.
    public struct Outcome: Sendable, Equatable {
        public var digest: String
        public var interface: String
        /// False when RTMR3 already held this model since boot (a restart of caid).
        public var extended: Bool
        public var events: Int
    }

    public let register: any RuntimeRegister
    public let logFile: String
    public let form: EventLogForm
    private let state = Mutex<AAEventLog?>(nil)

    public init(register: any RuntimeRegister, logFile: String, form: EventLogForm) {
        self.register = register
        self.logFile = logFile
        self.form = form
    }

    /// Records the model and extends RTMR3 with it, unless RTMR3 already holds it (the log's last caid event is
    /// this digest and the log replays to the register). A model changed without a reboot is measured after the
    /// old one: the log keeps both, and policies judge the last.
    public func measure(modelDigest: String, modelID: String) throws(AttestationError) -> Outcome {
        try state.withLock { (cached: inout AAEventLog?) throws(AttestationError) -> Outcome in
            var log: AAEventLog
            if let loaded = cached { log = loaded } else { log = try load() }
            cached = log
            if log.last(domain: "caid", operation: "load-model") == .caidModel(digest: modelDigest) {
                return Outcome(digest: modelDigest, interface: register.interface, extended: false, events: log.events.count)
            }
            do throws(AttestationError) {
                for event in [AAEvent.caidModel(digest: modelDigest), .paiModel(digest: modelDigest, modelID: modelID)] {
                    let digest = log.extensions(adding: event)
                    log.events.append(event)
                    try save(log)
                    try register.extend(digest)
                }
            } catch {
                // Read the file and the register again next time: the start's check completes or refuses it.
                cached = nil
                throw error
            }
            cached = log
            return Outcome(digest: modelDigest, interface: register.interface, extended: true, events: log.events.count)
        }
    }

    /// Runs `body` with the log as it stands (nil before anything was measured), holding the lock, so that
    /// evidence made inside it matches the register.
    public func withLog<T>(_ body: (AAEventLog?) throws(AttestationError) -> T) throws(AttestationError) -> T {
        try state.withLock { (cached: inout AAEventLog?) throws(AttestationError) -> T in
            if cached == nil, FileManager.default.fileExists(atPath: logFile) { cached = try load() }
            return try body(cached)
        }
    }

    /// The log from the file, checked against the register; or a new one.
    private func load() throws(AttestationError) -> AAEventLog {
        let current = try register.read()
        guard let data = FileManager.default.contents(atPath: logFile) else {
            switch form {
            case .tcg2:
                guard current == AAEventLog.zero else {
                    throw AttestationError(.tee, "RTMR3 is \(AAEventLog.hex(current)), not zero, and caid has no event log at \(logFile): something else extended it since boot (an attestation agent?). A verifier would refuse every quote; stop the other agent and reboot")
                }
                return AAEventLog(form: .tcg2)
            case .text:
                // The text form starts where RTMR3 is, with the INIT line extended first.
                let log = AAEventLog(form: .text, initial: current)
                try save(log)
                try register.extend(log.extensions[0])
                return log
            }
        }
        let log: AAEventLog
        do {
            log = try JSONDecoder().decode(AAEventLog.self, from: data)
        } catch {
            throw AttestationError(.tee, "\(logFile) is not caid's event log (\(error)); remove it and reboot to measure from a clean RTMR3")
        }
        guard log.form == form else {
            throw AttestationError(.tee, "\(logFile) holds a \(log.form.rawValue) event log but CAID_EVENTLOG_FORM is \(form.rawValue); the form can change only with a reboot")
        }
        if log.replay() == current { return log }
        // Written, then killed before the extend: complete it.
        var shorter = log
        if let last = shorter.events.popLast(), shorter.replay() == current {
            try register.extend(shorter.extensions(adding: last))
            return log
        }
        throw AttestationError(.tee, "RTMR3 is \(AAEventLog.hex(current)) but caid's event log \(logFile) (\(log.events.count) events) replays to \(AAEventLog.hex(log.replay())): something else extended RTMR3, or the log was changed. A verifier would refuse every quote; reboot to start clean")
    }

    private func save(_ log: AAEventLog) throws(AttestationError) {
        let directory = (logFile as NSString).deletingLastPathComponent
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            let data = try JSONEncoder().encode(log)
            let staging = logFile + ".tmp"
            let fd = open(staging, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw AttestationError(.tee, "cannot write \(staging): \(String(cString: strerror(errno)))") }
            let written = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            let synced = fsync(fd) == 0
            close(fd)
            guard written == data.count, synced, rename(staging, logFile) == 0 else {
                throw AttestationError(.tee, "cannot write the event log \(logFile): \(String(cString: strerror(errno)))")
            }
        } catch let error as AttestationError {
            throw error
        } catch {
            throw AttestationError(.tee, "cannot write the event log \(logFile): \(error)")
        }
    }
}
