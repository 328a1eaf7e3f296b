import Foundation

/// Every cookie the KBS (and a load balancer in front of it) sets, sent back on each request.
///
/// A legacy Trustee keeps sessions in memory per replica, so the load balancer's stickiness cookie matters as much
/// as `kbs-session-id`. One jar serves one `TRUSTEE_URL`; paths and domains are not told apart.
public struct CookieJar: Sendable {
    private struct Cookie: Sendable {
        var value: String
        var expires: Date?
    }

    private var cookies: [String: Cookie] = [:]
    /// Name order as first set, so the header is stable.
    private var order: [String] = []

    public init() {}

    /// Takes the `Set-Cookie` header values of a response.
    public mutating func store(setCookie headers: [String], now: Date = Date()) {
        for header in headers {
            let parts = header.split(separator: ";", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard let pair = parts.first, let equals = pair.firstIndex(of: "=") else { continue }
            let name = String(pair[..<equals]).trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty else { continue }
            var cookie = Cookie(value: String(pair[pair.index(after: equals)...]), expires: nil)
            for attribute in parts.dropFirst() {
                let lower = attribute.lowercased()
                if lower.hasPrefix("max-age="), let seconds = Int(attribute.dropFirst(8)) {
                    cookie.expires = now.addingTimeInterval(TimeInterval(seconds))
                } else if lower.hasPrefix("expires="), cookie.expires == nil {
                    cookie.expires = Self.parseDate(String(attribute.dropFirst(8)))
                }
            }
            if cookies[name] == nil { order.append(name) }
            cookies[name] = cookie
        }
    }

    /// The `Cookie` header for a request, without expired cookies; nil when there is none.
    public func header(now: Date = Date()) -> String? {
        let live = order.compactMap { name -> String? in
            guard let cookie = cookies[name], cookie.expires.map({ $0 > now }) ?? true else { return nil }
            return "\(name)=\(cookie.value)"
        }
        return live.isEmpty ? nil : live.joined(separator: "; ")
    }

    /// When the cookie `name` expires; nil when it is not set or has no expiry.
    public func expiry(of name: String) -> Date? { cookies[name]?.expires }

    /// Forgets every cookie, for a fresh handshake after the session was refused.
    public mutating func removeAll() {
        cookies = [:]
        order = []
    }

    private static func parseDate(_ text: String) -> Date? {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        for format in ["EEE, dd MMM yyyy HH:mm:ss zzz", "EEEE, dd-MMM-yy HH:mm:ss zzz", "EEE, dd-MMM-yyyy HH:mm:ss zzz"] {
            formatter.dateFormat = format
            if let date = formatter.date(from: text) { return date }
        }
        return nil
    }
}
