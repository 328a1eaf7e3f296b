import Foundation

/// Which HTTP proxy to use for OSS, as curl and most tools decide it: `CAID_OSS_PROXY` first, then `HTTPS_PROXY`
/// or `HTTP_PROXY` (by the endpoint's scheme, upper or lower case), except for hosts matched by `NO_PROXY`.
/// A Dragonfly dfdaemon on each host is used this way.
public struct ProxySettings: Sendable, Equatable {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// The proxy for `url`, or `nil` for a direct connection.
    public static func resolve(for url: URL, override: String?, environment: [String: String]) -> ProxySettings? {
        func variable(_ name: String) -> String? {
            let value = environment[name] ?? environment[name.lowercased()]
            return value?.isEmpty == false ? value : nil
        }
        guard let host = url.host?.lowercased() else { return nil }
        let chosen: String?
        if let override, !override.isEmpty {
            chosen = override
        } else {
            if let exceptions = variable("NO_PROXY"), bypasses(host, exceptions) { return nil }
            chosen = url.scheme == "https" ? variable("HTTPS_PROXY") : variable("HTTP_PROXY")
        }
        guard let chosen else { return nil }
        let withScheme = chosen.contains("://") ? chosen : "http://" + chosen
        guard let proxy = URL(string: withScheme), let proxyHost = proxy.host else { return nil }
        return ProxySettings(host: proxyHost, port: proxy.port ?? (proxy.scheme == "https" ? 443 : 80))
    }

    /// `NO_PROXY` entries: `*`, exact hosts, and domain suffixes (`.example.com` or `example.com`).
    static func bypasses(_ host: String, _ list: String) -> Bool {
        for raw in list.split(separator: ",") {
            var entry = raw.trimmingCharacters(in: .whitespaces).lowercased()
            if let colon = entry.lastIndex(of: ":"), !entry.contains("]") { entry = String(entry[..<colon]) }
            if entry == "*" { return true }
            if entry.hasPrefix(".") { entry.removeFirst() }
            if !entry.isEmpty, host == entry || host.hasSuffix("." + entry) { return true }
        }
        return false
    }
}
