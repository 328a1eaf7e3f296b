/// An error a service can throw to tell the supervisor whether trying again can help.
///
/// Errors that do not conform are taken as transient: the service is started again after a backoff.
public protocol ClassifiedFailure: Error {
    /// `true` when retrying cannot fix it (bad configuration, a refused policy, a wrong password).
    var isPermanent: Bool { get }
}

/// A service failure in words for the operator: what failed and what to do.
public struct ServiceFailure: ClassifiedFailure, Sendable, CustomStringConvertible {
    public var message: String
    public var isPermanent: Bool

    public init(_ message: String, permanent: Bool = false) {
        self.message = message
        self.isPermanent = permanent
    }

    public var description: String { message }
}
