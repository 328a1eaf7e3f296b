import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The two date forms OSS signatures use, formatted without a DateFormatter (they are made for every request).
package enum OSSDate {
    private static let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    private static func utc(_ date: Date) -> tm {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return parts
    }

    /// `20231216T162057Z`, for V4's `x-oss-date`.
    package static func basic(_ date: Date) -> String {
        let t = utc(date)
        return String(format: "%04d%02d%02dT%02d%02d%02dZ", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)
    }

    /// `Sat, 16 Dec 2023 16:20:57 GMT`, for V1's `Date`.
    package static func http(_ date: Date) -> String {
        let t = utc(date)
        return String(format: "%@, %02d %@ %04d %02d:%02d:%02d GMT", days[Int(t.tm_wday)], t.tm_mday, months[Int(t.tm_mon)], t.tm_year + 1900, t.tm_hour, t.tm_min, t.tm_sec)
    }

    /// Parses an HTTP `Date` header (the server's clock, after a skew error).
    package static func parseHTTP(_ text: String) -> Date? {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        return formatter.date(from: text)
    }
}
