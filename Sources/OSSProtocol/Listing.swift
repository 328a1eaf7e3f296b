import Foundation

/// One object of a bucket listing.
public struct ObjectSummary: Sendable, Equatable, Codable {
    public var key: String
    public var size: UInt64
    /// The ETag as OSS sends it, quotes included (it is sent back verbatim in `If-Match`).
    public var etag: String

    public init(key: String, size: UInt64, etag: String) {
        self.key = key
        self.size = size
        self.etag = etag
    }
}

/// One page of a ListObjectsV2 answer.
public struct ListPage: Sendable, Equatable {
    public var objects: [ObjectSummary]
    /// Set when more pages follow.
    public var nextContinuationToken: String?
}

/// An OSS error answer: the `<Error>` document, or the `x-oss-err` header of a HEAD.
public struct OSSError: Error, Sendable, Equatable, CustomStringConvertible {
    public var status: Int
    public var code: String
    public var message: String
    public var requestID: String

    package init(status: Int, code: String, message: String, requestID: String) {
        self.status = status
        self.code = code
        self.message = message
        self.requestID = requestID
    }

    /// Errors that retrying with the same request cannot fix.
    public var isPermanent: Bool {
        ["AccessDenied", "NoSuchBucket", "NoSuchKey", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidBucketName", "PreconditionFailed"].contains(code)
    }

    public var description: String {
        "OSS answered \(status) \(code): \(message) (request id \(requestID.isEmpty ? "none" : requestID))"
    }
}

/// Parsers of OSS's XML answers. Pure, and strict about what they need: a malformed answer is an error, never a
/// crash or a silently short listing.
public enum OSSXML {
    /// The answer could not be read.
    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
    }

    /// Parses a ListObjectsV2 page. With `encoding-type=url` keys and tokens arrive percent-encoded.
    public static func listPage(_ data: Data) throws(ParseError) -> ListPage {
        let root = try parse(data)
        guard root.name == "ListBucketResult" else { throw ParseError(description: "a listing was expected, got <\(root.name)>") }
        let urlEncoded = root.child("EncodingType")?.text == "url"
        func decode(_ text: String) throws(ParseError) -> String {
            guard urlEncoded else { return text }
            guard let decoded = text.removingPercentEncoding else { throw ParseError(description: "'\(text)' is not valid URL encoding") }
            return decoded
        }
        var objects: [ObjectSummary] = []
        for content in root.children where content.name == "Contents" {
            guard let key = content.child("Key")?.text, let sizeText = content.child("Size")?.text, let size = UInt64(sizeText),
                let etag = content.child("ETag")?.text
            else { throw ParseError(description: "an entry of the listing lacks Key, Size or ETag") }
            objects.append(ObjectSummary(key: try decode(key), size: size, etag: etag))
        }
        let truncated = root.child("IsTruncated")?.text == "true"
        var token: String?
        if truncated {
            guard let next = root.child("NextContinuationToken")?.text, !next.isEmpty else {
                throw ParseError(description: "the listing is truncated but has no NextContinuationToken")
            }
            token = try decode(next)
        }
        return ListPage(objects: objects, nextContinuationToken: token)
    }

    /// Parses an `<Error>` body; `status` and a fallback request id come from the response.
    public static func error(_ data: Data, status: Int, requestID: String = "") -> OSSError {
        guard let root = try? parse(data), root.name == "Error" else {
            return OSSError(status: status, code: "HTTP\(status)", message: "no OSS error document", requestID: requestID)
        }
        return OSSError(
            status: status, code: root.child("Code")?.text ?? "HTTP\(status)", message: root.child("Message")?.text ?? "",
            requestID: root.child("RequestId")?.text ?? requestID)
    }

    /// Decodes the base64 `x-oss-err` header that carries the error document of a HEAD request.
    public static func headError(header: String, status: Int, requestID: String = "") -> OSSError {
        error(Data(base64Encoded: header) ?? Data(), status: status, requestID: requestID)
    }

    /// A tiny element tree: enough for OSS's flat documents.
    struct Element {
        var name: String
        var text = ""
        var children: [Element] = []
        func child(_ name: String) -> Element? { children.first { $0.name == name } }
    }

    /// Parses an XML document into elements: tags (attributes skipped), character data with the five predefined
    /// entities and character references, CDATA, comments and the `<?xml ?>` declaration. A DOCTYPE is refused,
    /// so there are no entity definitions to expand. Enough for OSS's answers, and it spares caid FoundationXML,
    /// which would make the installed binary need libxml2.
    static func parse(_ data: Data) throws(ParseError) -> Element {
        var reader = XMLReader(bytes: Array(data))
        return try reader.document()
    }
}

/// The reader behind ``OSSXML/parse(_:)``: one pass over the bytes, a stack of open elements.
struct XMLReader {
    typealias ParseError = OSSXML.ParseError
    let bytes: [UInt8]
    var index = 0

    init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    mutating func document() throws(ParseError) -> OSSXML.Element {
        var stack: [OSSXML.Element] = []
        var root: OSSXML.Element?
        while index < bytes.count {
            if bytes[index] != UInt8(ascii: "<") {
                let text = try characterData()
                if stack.isEmpty {
                    guard text.allSatisfy(\.isWhitespace) else { throw fail("text outside the document element") }
                } else {
                    stack[stack.count - 1].text += text
                }
                continue
            }
            if starts(with: "<?") {
                try skip(past: "?>")
            } else if starts(with: "<!--") {
                try skip(past: "-->")
            } else if starts(with: "<![CDATA[") {
                index += 9
                let start = index
                try skip(past: "]]>")
                guard !stack.isEmpty else { throw fail("CDATA outside the document element") }
                stack[stack.count - 1].text += String(decoding: bytes[start..<(index - 3)], as: UTF8.self)
            } else if starts(with: "<!") {
                throw fail("a DOCTYPE or other declaration, which OSS never sends")
            } else if starts(with: "</") {
                index += 2
                let name = try self.name()
                skipSpace()
                guard take(">") else { throw fail("a malformed end tag </\(name)") }
                guard let element = stack.popLast(), element.name == name else { throw fail("</\(name)> does not close the open element") }
                if stack.isEmpty { root = element } else { stack[stack.count - 1].children.append(element) }
            } else {
                guard root == nil else { throw fail("a second document element") }
                index += 1
                let name = try self.name()
                // Attributes (xmlns on the root) are not needed: skip to the end of the tag, quotes respected.
                var quote: UInt8?
                while index < bytes.count {
                    let byte = bytes[index]
                    if let open = quote {
                        if byte == open { quote = nil }
                    } else if byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "'") {
                        quote = byte
                    } else if byte == UInt8(ascii: ">") {
                        break
                    }
                    index += 1
                }
                guard index < bytes.count else { throw fail("the tag <\(name) does not end") }
                let empty = bytes[index - 1] == UInt8(ascii: "/")
                index += 1
                let element = OSSXML.Element(name: name)
                if empty {
                    if stack.isEmpty { root = element } else { stack[stack.count - 1].children.append(element) }
                } else {
                    stack.append(element)
                }
            }
        }
        guard stack.isEmpty else { throw fail("the document ends inside <\(stack[stack.count - 1].name)>") }
        guard let root else { throw fail("no document element") }
        return root
    }

    private func fail(_ what: String) -> ParseError {
        ParseError(description: "the answer is not well-formed XML: \(what) at byte \(index)")
    }

    private func starts(with text: String) -> Bool {
        let prefix = Array(text.utf8)
        return bytes.count - index >= prefix.count && bytes[index..<(index + prefix.count)].elementsEqual(prefix)
    }

    private mutating func take(_ text: String) -> Bool {
        guard starts(with: text) else { return false }
        index += text.utf8.count
        return true
    }

    private mutating func skip(past end: String) throws(ParseError) {
        while index < bytes.count {
            if take(end) { return }
            index += 1
        }
        throw fail("'\(end)' is missing")
    }

    private mutating func skipSpace() {
        while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
    }

    private mutating func name() throws(ParseError) -> String {
        let start = index
        while index < bytes.count {
            let byte = bytes[index]
            if [0x20, 0x09, 0x0A, 0x0D, UInt8(ascii: ">"), UInt8(ascii: "/"), UInt8(ascii: "<"), UInt8(ascii: "=")].contains(byte) { break }
            index += 1
        }
        guard index > start else { throw fail("a tag without a name") }
        return String(decoding: bytes[start..<index], as: UTF8.self)
    }

    /// Text up to the next `<`, with entity and character references replaced.
    private mutating func characterData() throws(ParseError) -> String {
        var out: [UInt8] = []
        while index < bytes.count, bytes[index] != UInt8(ascii: "<") {
            guard bytes[index] == UInt8(ascii: "&") else {
                out.append(bytes[index])
                index += 1
                continue
            }
            guard let semicolon = bytes[index...].prefix(12).firstIndex(of: UInt8(ascii: ";")) else { throw fail("an unterminated '&' reference") }
            let reference = String(decoding: bytes[(index + 1)..<semicolon], as: UTF8.self)
            switch reference {
            case "amp": out.append(UInt8(ascii: "&"))
            case "lt": out.append(UInt8(ascii: "<"))
            case "gt": out.append(UInt8(ascii: ">"))
            case "quot": out.append(UInt8(ascii: "\""))
            case "apos": out.append(UInt8(ascii: "'"))
            default:
                let number: UInt32?
                if reference.hasPrefix("#x") { number = UInt32(reference.dropFirst(2), radix: 16) }
                else if reference.hasPrefix("#") { number = UInt32(reference.dropFirst(1)) }
                else { number = nil }
                guard let number, number != 0, let scalar = Unicode.Scalar(number) else { throw fail("the unknown reference &\(reference);") }
                out.append(contentsOf: Array(String(Character(scalar)).utf8))
            }
            index = semicolon + 1
        }
        return String(decoding: out, as: UTF8.self)
    }
}
