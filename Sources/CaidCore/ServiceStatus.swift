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

    public init(name: String, required: Bool, state: ServiceState = .waiting, since: Date = Date()) {
        self.name = name
        self.required = required
        self.state = state
        self.restarts = 0
        self.since = since
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

    public init(state: String, ready: Bool, services: [ServiceStatus], summary: String) {
        self.state = state
        self.ready = ready
        self.services = services
        self.summary = summary
    }
}
