/// Why evidence could not be produced, in words for the operator: what was tried, what was found, what to do.
public struct AttestationError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// No TEE was found and the sample attester was not chosen explicitly.
        case noTEE
        /// The TEE interface answered something unexpected (wrong provider, a race, a short quote).
        case tee
        /// The GPU evidence could not be collected.
        case gpu
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
