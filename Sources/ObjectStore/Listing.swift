import Foundation

#if canImport(FoundationXML)
import FoundationXML
#endif

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

    static func parse(_ data: Data) throws(ParseError) -> Element {
        let builder = TreeBuilder()
        let parser = XMLParser(data: data)
        parser.shouldResolveExternalEntities = false
        parser.delegate = builder
        guard parser.parse(), let root = builder.root else {
            throw ParseError(description: "the answer is not well-formed XML (\(parser.parserError.map { "\($0)" } ?? "empty"))")
        }
        return root
    }

    private final class TreeBuilder: NSObject, XMLParserDelegate {
        var stack: [Element] = []
        var root: Element?

        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?, attributes: [String: String]) {
            stack.append(Element(name: name))
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) {
            if !stack.isEmpty { stack[stack.count - 1].text += string }
        }

        func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
            guard let element = stack.popLast() else { return }
            if stack.isEmpty { root = element } else { stack[stack.count - 1].children.append(element) }
        }
    }
}
