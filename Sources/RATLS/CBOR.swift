/// The subset of CBOR (RFC 8949) the RA-TLS certificate uses: unsigned integers, byte and text strings, arrays,
/// maps and tags, definite lengths only. Decoding is bounds-checked and depth-limited, for certificates from the
/// network.
public indirect enum CBOR: Sendable, Equatable {
    case unsigned(UInt64)
    case bytes([UInt8])
    case text(String)
    case array([CBOR])
    /// Entries in order (the RA-TLS claims keep insertion order).
    case map([(CBOR, CBOR)])
    case tagged(UInt64, CBOR)

    public static func == (lhs: CBOR, rhs: CBOR) -> Bool { lhs.encoded == rhs.encoded }

    /// What is wrong with a CBOR item.
    public struct DecodingError: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        encode(into: &out)
        return out
    }

    private func encode(into out: inout [UInt8]) {
        switch self {
        case .unsigned(let value): Self.head(0, value, into: &out)
        case .bytes(let bytes):
            Self.head(2, UInt64(bytes.count), into: &out)
            out += bytes
        case .text(let text):
            Self.head(3, UInt64(text.utf8.count), into: &out)
            out += Array(text.utf8)
        case .array(let items):
            Self.head(4, UInt64(items.count), into: &out)
            for item in items { item.encode(into: &out) }
        case .map(let entries):
            Self.head(5, UInt64(entries.count), into: &out)
            for (key, value) in entries {
                key.encode(into: &out)
                value.encode(into: &out)
            }
        case .tagged(let tag, let item):
            Self.head(6, tag, into: &out)
            item.encode(into: &out)
        }
    }

    private static func head(_ major: UInt8, _ value: UInt64, into out: inout [UInt8]) {
        let type = major << 5
        switch value {
        case 0..<24: out.append(type | UInt8(value))
        case 24...0xFF: out += [type | 24, UInt8(value)]
        case 0x100...0xFFFF: out += [type | 25] + bigEndian(value, 2)
        case 0x10000...0xFFFF_FFFF: out += [type | 26] + bigEndian(value, 4)
        default: out += [type | 27] + bigEndian(value, 8)
        }
    }

    private static func bigEndian(_ value: UInt64, _ count: Int) -> [UInt8] {
        (0..<count).reversed().map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
    }

    /// Decodes exactly one item filling `bytes`.
    public init(decoding bytes: some Collection<UInt8>) throws(DecodingError) {
        var reader = Reader(bytes: Array(bytes))
        self = try reader.item(depth: 0)
        guard reader.offset == reader.bytes.count else {
            throw DecodingError(description: "\(reader.bytes.count - reader.offset) bytes after the CBOR item")
        }
    }

    private struct Reader {
        let bytes: [UInt8]
        var offset = 0

        mutating func take(_ count: Int) throws(DecodingError) -> ArraySlice<UInt8> {
            guard count >= 0, count <= bytes.count - offset else { throw DecodingError(description: "CBOR item runs past the end at byte \(offset)") }
            defer { offset += count }
            return bytes[offset..<(offset + count)]
        }

        mutating func argument(_ info: UInt8) throws(DecodingError) -> UInt64 {
            switch info {
            case 0..<24: return UInt64(info)
            case 24, 25, 26, 27:
                let size = 1 << Int(info - 24)
                return try take(size).reduce(0) { $0 << 8 | UInt64($1) }
            default: throw DecodingError(description: "indefinite or reserved CBOR length at byte \(offset)")
            }
        }

        mutating func length(_ info: UInt8) throws(DecodingError) -> Int {
            let value = try argument(info)
            guard value <= UInt64(bytes.count - offset) else { throw DecodingError(description: "CBOR length \(value) exceeds the data") }
            return Int(value)
        }

        mutating func item(depth: Int) throws(DecodingError) -> CBOR {
            guard depth < 16 else { throw DecodingError(description: "CBOR nested deeper than 16") }
            let initial = try take(1).first ?? 0
            let major = initial >> 5
            let info = initial & 0x1F
            switch major {
            case 0: return .unsigned(try argument(info))
            case 2: return .bytes(Array(try take(try length(info))))
            case 3:
                let raw = try take(try length(info))
                guard let text = String(validating: raw, as: UTF8.self) else { throw DecodingError(description: "CBOR text is not UTF-8") }
                return .text(text)
            case 4:
                let count = try length(info)
                var items: [CBOR] = []
                for _ in 0..<count { items.append(try item(depth: depth + 1)) }
                return .array(items)
            case 5:
                let count = try length(info)
                var entries: [(CBOR, CBOR)] = []
                for _ in 0..<count { entries.append((try item(depth: depth + 1), try item(depth: depth + 1))) }
                return .map(entries)
            case 6: return .tagged(try argument(info), try item(depth: depth + 1))
            default: throw DecodingError(description: "CBOR major type \(major) is not used in RA-TLS evidence")
            }
        }
    }

    /// The value of text key `key` in a map.
    public subscript(key: String) -> CBOR? {
        guard case .map(let entries) = self else { return nil }
        return entries.first { $0.0 == .text(key) }?.1
    }
}
