/// Something about a gocryptfs volume is wrong, in words for the operator: what, where, and what to do.
public struct GocryptfsError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What kind of problem it is; callers branch on this, operators read ``message``.
    public enum Code: Sendable, Equatable {
        /// The password does not open the master key.
        case wrongPassword
        /// `gocryptfs.conf` is not a valid config.
        case corruptConfig
        /// The volume uses a feature caid does not read (AES-SIV, XChaCha20-Poly1305, FIDO2, an unknown flag).
        case unsupportedFeature
        /// A file header is invalid.
        case corruptHeader
        /// A content block fails authentication or is malformed.
        case corruptBlock
        /// An encrypted name (or `.name` file, or diriv) is invalid.
        case corruptName
        /// A name that cannot exist in a gocryptfs volume (empty, `.`, `..`, with `/` or NUL, too long).
        case invalidName
        /// Reading or writing the volume's files failed.
        case io
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
