import NIOHTTP1

/// Which destinations `caid tunnel` carries, like TNG's `dst_filters` (`tng/src/tunnel/utils/endpoint_matcher.rs`
/// @ v2.2.6): each entry is a domain in Envoy's wildcard forms (`www.foo.com`, `*.foo.com`, `foo.*`, `*`) and a port
/// (default 80). An empty list carries everything. Unlike TNG, which sends a destination outside the list directly
/// and unprotected, caid refuses it: nothing leaves the tunnel in clear.
public struct DestinationFilter: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        enum Domain: Sendable, Equatable {
            case exact(String), suffix(String), prefix(String), any
        }
        var domain: Domain
        var port: Int

        func matches(host: String, port: Int) -> Bool {
            guard port == self.port else { return false }
            let host = host.lowercased()
            switch domain {
            case .exact(let name): return host == name
            case .suffix(let tail): return host.hasSuffix(tail)
            case .prefix(let head): return host.hasPrefix(head)
            case .any: return true
            }
        }
    }

    public var entries: [Entry]

    public init(entries: [Entry] = []) {
        self.entries = entries
    }

    public struct Invalid: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// Parses `domain[:port]` entries (`[v6]:port` for IPv6 literals).
    public init(parsing specs: [String]) throws(Invalid) {
        var entries: [Entry] = []
        for spec in specs {
            guard let (host, port) = Authority.split(spec, defaultPort: 80) else {
                throw Invalid(description: "'\(spec)' is not domain[:port]")
            }
            let name = host.lowercased()
            let domain: Entry.Domain
            if name == "*" {
                domain = .any
            } else if name.hasPrefix("*") {
                domain = .suffix(String(name.dropFirst()))
            } else if name.hasSuffix("*") {
                domain = .prefix(String(name.dropLast()))
            } else {
                domain = .exact(name)
            }
            let inner: Substring
            switch domain {
            case .exact: inner = Substring(name)
            case .suffix, .prefix: inner = name.dropFirst().dropLast()
            case .any: inner = ""
            }
            guard !inner.contains("*") else {
                throw Invalid(description: "'\(spec)': the wildcard * goes at the start or the end of the domain only")
            }
            entries.append(Entry(domain: domain, port: port))
        }
        self.entries = entries
    }

    public func allows(host: String, port: Int) -> Bool {
        entries.isEmpty || entries.contains { $0.matches(host: host, port: port) }
    }
}

/// Where a proxy request goes and how, decided from its head alone (TNG `http_proxy` ingress,
/// `tng/src/tunnel/ingress/http_proxy.rs` @ v2.2.6).
public struct ProxyRoute: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// `CONNECT host:port`: after `200`, raw bytes both ways.
        case connect
        /// Any other method: re-sent in origin form over a stream of its own, the response relayed back.
        case forward
    }

    public var kind: Kind
    public var host: String
    public var port: Int

    /// Why a request is not carried: the status and words for the proxy user.
    public struct Problem: Error, Sendable, Equatable {
        public var status: HTTPResponseStatus
        public var message: String
    }

    static let forwardHeader = "X-Tng-Http-Forward"

    /// - CONNECT: the destination is the request target's authority.
    /// - Anything else: the destination is the `Host` header, as TNG takes it (not the absolute URI), port 80 by
    ///   default; a request that already carries `X-Tng-Http-Forward` went through a tunnel once: `400`, as TNG
    ///   answers recursion.
    public static func make(_ head: HTTPRequestHead, filter: DestinationFilter) -> Result<ProxyRoute, Problem> {
        let route: ProxyRoute
        if head.method == .CONNECT {
            guard let (host, port) = Authority.split(head.uri, defaultPort: 80) else {
                return .failure(Problem(status: .badRequest, message: "CONNECT needs host:port, got '\(head.uri)'"))
            }
            route = ProxyRoute(kind: .connect, host: host, port: port)
        } else {
            if head.headers.contains(name: forwardHeader) {
                return .failure(Problem(status: .badRequest, message: "recursion is detected: the request already went through a tunnel (\(forwardHeader))"))
            }
            let hosts = head.headers[canonicalForm: "host"]
            guard let value = hosts.first, hosts.count == 1 else {
                return .failure(Problem(status: .badRequest, message: hosts.isEmpty ? "no Host header in the request" : "more than one Host header"))
            }
            guard let (host, port) = Authority.split(String(value), defaultPort: 80) else {
                return .failure(Problem(status: .badRequest, message: "the Host header '\(value)' is not host[:port]"))
            }
            route = ProxyRoute(kind: .forward, host: host, port: port)
        }
        guard filter.allows(host: route.host, port: route.port) else {
            return .failure(Problem(status: .forbidden, message: "\(route.host):\(route.port) is not in the destinations to tunnel (--dst-filter); it is not sent unprotected"))
        }
        return .success(route)
    }

    /// The head sent into the tunnel for a forwarded request: origin form, hop-by-hop headers dropped, one
    /// request per stream (`Connection: close`), and `X-Tng-Http-Forward: true`.
    public static func forwardedHead(_ head: HTTPRequestHead) -> HTTPRequestHead {
        var target = head.uri
        if let scheme = target.firstRange(of: "://"), target[..<scheme.lowerBound].allSatisfy({ $0.isLetter }) {
            let rest = target[scheme.upperBound...]
            target = rest.firstIndex(where: { $0 == "/" || $0 == "?" }).map { String(rest[$0...]) } ?? "/"
            if target.hasPrefix("?") { target = "/" + target }
        }
        var headers = head.headers
        let named = headers[canonicalForm: "connection"].map { $0.lowercased() }
        for name in ["connection", "proxy-connection", "keep-alive", "proxy-authorization", "te", "upgrade"] + named {
            headers.remove(name: name)
        }
        headers.add(name: "Connection", value: "close")
        headers.add(name: forwardHeader, value: "true")
        return HTTPRequestHead(version: .http1_1, method: head.method, uri: target, headers: headers)
    }
}

enum Authority {
    /// `host[:port]` or `[v6][:port]`; without a port, `defaultPort`.
    static func split(_ authority: String, defaultPort: Int) -> (String, Int)? {
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            let host = String(authority[authority.index(after: authority.startIndex)..<close])
            let rest = authority[authority.index(after: close)...]
            if rest.isEmpty { return host.isEmpty ? nil : (host, defaultPort) }
            guard rest.hasPrefix(":"), let port = Int(rest.dropFirst()), (1...65535).contains(port), !host.isEmpty else { return nil }
            return (host, port)
        }
        let pieces = authority.split(separator: ":", omittingEmptySubsequences: false)
        guard let host = pieces.first, !host.isEmpty, pieces.count <= 2, !host.contains(where: { $0 == "/" || $0 == " " }) else { return nil }
        if pieces.count == 1 { return (String(host), defaultPort) }
        guard let port = Int(pieces[1]), (1...65535).contains(port) else { return nil }
        return (String(host), port)
    }
}
