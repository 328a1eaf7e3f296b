/// A Key Broker Service resource, written `kbs:///<repository>/<type>/<tag>` as Confidential Containers and the
/// CAI `MODEL_KEY_ID` write it. An authority (`kbs://host/...`) is accepted and ignored: the KBS is `TRUSTEE_URL`.
public struct ResourceURI: Sendable, Hashable, CustomStringConvertible {
    public var repository: String
    public var type: String
    public var tag: String

    /// What is wrong with a resource URI, in words for the operator.
    public struct ParseError: Error, Sendable, Equatable {
        public var message: String
    }

    public init(repository: String, type: String, tag: String) {
        self.repository = repository
        self.type = type
        self.tag = tag
    }

    /// Parses `kbs:///repo/type/tag`.
    public init(parsing text: String) throws(ParseError) {
        let scheme = "kbs://"
        guard text.hasPrefix(scheme) else {
            throw ParseError(message: "'\(text)' does not start with kbs://; expected kbs:///<repository>/<type>/<tag>")
        }
        let rest = text.dropFirst(scheme.count)
        guard let slash = rest.firstIndex(of: "/") else {
            throw ParseError(message: "'\(text)' has no resource path; expected kbs:///<repository>/<type>/<tag>")
        }
        let parts = rest[rest.index(after: slash)...].split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 3 else {
            throw ParseError(message: "'\(text)' has \(parts.count) path segments, expected 3: kbs:///<repository>/<type>/<tag>")
        }
        for part in parts {
            guard !part.isEmpty, part != ".", part != "..",
                part.utf8.allSatisfy({ Self.allowed($0) })
            else {
                throw ParseError(message: "'\(text)': segment '\(part)' must be non-empty letters, digits, '.', '_' or '-'")
            }
        }
        self.init(repository: String(parts[0]), type: String(parts[1]), tag: String(parts[2]))
    }

    /// The path below `kbs/v0/resource/`.
    public var path: String { "\(repository)/\(type)/\(tag)" }

    public var description: String { "kbs:///\(path)" }

    private static func allowed(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
            return true
        default:
            return false
        }
    }
}
