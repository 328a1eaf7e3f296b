import Foundation

/// Where a supervised service is in its life.
public enum ServiceState: String, Sendable, Codable, CaseIterable {
    /// Registered; waiting for the services it needs.
    case waiting
    /// Its work has started but it is not ready yet.
    case starting
    /// Ready: doing what it is for.
    case running
    /// Failed and waiting to be started again.
    case backoff
    /// Failed in a way that retrying cannot fix; the operator must act (see `lastError`).
    case failed
    /// Being stopped.
    case stopping
    /// Stopped.
    case stopped
}

/// What the health registry knows of one service; never holds a secret.
public struct ServiceStatus: Sendable, Codable, Equatable {
    public var name: String
    /// Whether caid is ready only when this service runs.
    public var required: Bool
    public var state: ServiceState
    /// What the service is doing now, in words ("waiting for attestation", "412 MB of 6.1 GB").
    public var detail: String?
    /// The last failure, in words.
    public var lastError: String?
    /// How many times the supervisor started it again after a failure.
    public var restarts: Int
    /// When it entered its current state.
    public var since: Date
    /// For the mount of a model still downloading: how much is local and how many reads wait.
    public var streaming: StreamingStatus?

    public init(name: String, required: Bool, state: ServiceState = .waiting, since: Date = Date()) {
        self.name = name
        self.required = required
        self.state = state
        self.restarts = 0
        self.since = since
    }
}

/// A streaming mount's download, as health shows it.
public struct StreamingStatus: Sendable, Codable, Equatable {
    /// Bytes of the streamed files on disk, out of their total.
    public var localBytes: UInt64
    public var totalBytes: UInt64
    /// Reads blocked now until their bytes arrive.
    public var waitingReads: Int
    /// Objects whose complete copy did not verify and are fetched again; their readers get EIO meanwhile.
    public var refetching: [String]
    /// Streamed objects not verified yet (all their bytes may be local, their check still to come).
    public var arriving: Int

    public init(localBytes: UInt64, totalBytes: UInt64, waitingReads: Int, refetching: [String], arriving: Int) {
        self.localBytes = localBytes
        self.totalBytes = totalBytes
        self.waitingReads = waitingReads
        self.refetching = refetching
        self.arriving = arriving
    }

    /// Everything is local and verified: no read can wait any more.
    public var complete: Bool { arriving == 0 && refetching.isEmpty }

    /// "412 MiB of 1024 MiB local, 2 reads waiting".
    public var summary: String {
        var text = complete ? "every streamed file local and verified" : "streaming: \(localBytes >> 20) MiB of \(totalBytes >> 20) MiB local, \(waitingReads) reads waiting"
        if !refetching.isEmpty { text += "; fetching again after a failed check (reads get EIO): " + refetching.prefix(3).joined(separator: ", ") }
        return text
    }
}

/// The whole daemon's health at one moment, as `/status` shows it.
public struct HealthSnapshot: Sendable, Codable, Equatable {
    /// `ready` when every required service runs, `stopping` on shutdown, `starting` otherwise.
    public var state: String
    public var ready: Bool
    public var services: [ServiceStatus]
    /// A one-line summary for systemd's STATUS= and `caid health`.
    public var summary: String

    /// Whether every byte of the model is on disk and verified: false while a streaming mount still downloads.
    /// (`ready` says the model can be read: reads of what has not arrived wait for it.)
    public var modelLocal: Bool { services.allSatisfy { $0.streaming?.complete ?? true } }

    public init(state: String, ready: Bool, services: [ServiceStatus], summary: String) {
        self.state = state
        self.ready = ready
        self.services = services
        self.summary = summary
    }
}
