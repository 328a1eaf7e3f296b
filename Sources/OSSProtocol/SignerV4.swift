import CaidBase
import Crypto
import Foundation

/// OSS Signature V4 (`OSS4-HMAC-SHA256`) for the Authorization header. Pure: it computes headers from a request
/// description and a time, and sends nothing.
public struct SignerV4: Sendable {
    public let region: String
    public let product = "oss"

    public init(region: String) {
        self.region = region
    }

    /// The headers to add to the request: `x-oss-date`, `x-oss-content-sha256`, `x-oss-security-token` when set,
    /// and `Authorization`.
    public func sign(_ request: OSSRequest, credentials: OSSCredentials, at date: Date) -> [String: String] {
        let stamp = OSSDate.basic(date)
        let day = String(stamp.prefix(8))
        var headers = request.headers
        headers["x-oss-date"] = stamp
        if headers.keys.first(where: { $0.lowercased() == "x-oss-content-sha256" }) == nil {
            headers["x-oss-content-sha256"] = "UNSIGNED-PAYLOAD"
        }
        if let token = credentials.securityToken, !token.isEmpty {
            headers["x-oss-security-token"] = token.withBytes { String(decoding: $0, as: UTF8.self) }
        }
        let scope = "\(day)/\(region)/\(product)/aliyun_v4_request"
        let stringToSign = "OSS4-HMAC-SHA256\n\(stamp)\n\(scope)\n" + Self.hex(SHA256.hash(data: Data(canonicalRequest(request, headers: headers).utf8)))
        let signature = signingKey(credentials.secret, day: day).withUnsafeBytes { key in
            Self.hex(HMAC<SHA256>.authenticationCode(for: Data(stringToSign.utf8), using: SymmetricKey(data: key)))
        }
        var added: [String: String] = [
            "x-oss-date": stamp,
            "Authorization": "OSS4-HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope),Signature=\(signature)",
        ]
        for name in ["x-oss-content-sha256", "x-oss-security-token"] { if let value = headers[name] { added[name] = value } }
        return added
    }

    /// The canonical request, exposed for tests that compare it with the SDK's.
    func canonicalRequest(_ request: OSSRequest, headers: [String: String]) -> String {
        var path = "/"
        if let bucket = request.bucket {
            path += bucket + "/"
            if let key = request.key { path += key }
        }
        let query = request.query
            .map { (Self.encode($0.0, keepSlash: false), Self.encode($0.1, keepSlash: false)) }
            .sorted { $0.0 < $1.0 }
            .map { $0.1.isEmpty ? $0.0 : "\($0.0)=\($0.1)" }
            .joined(separator: "&")
        let signed = headers
            .map { ($0.key.lowercased(), $0.value) }
            .filter { $0.0.hasPrefix("x-oss-") || $0.0 == "content-type" || $0.0 == "content-md5" }
            .sorted { $0.0 < $1.0 }
        let canonicalHeaders = signed.map { "\($0.0):\($0.1)\n" }.joined()
        let payload = headers.first { $0.key.lowercased() == "x-oss-content-sha256" }?.value ?? "UNSIGNED-PAYLOAD"
        return [request.method, Self.encode(path, keepSlash: true), query, canonicalHeaders, "", payload].joined(separator: "\n")
    }

    /// HMAC chain: "aliyun_v4" + secret → day → region → product → "aliyun_v4_request".
    private func signingKey(_ secret: Secret, day: String) -> SymmetricKey {
        // "aliyun_v4" + secret, built in one buffer that is wiped (SymmetricKey keeps its own, wiped, copy).
        var key = secret.withBytes { secret in
            var material = [UInt8](repeating: 0, count: 9 + secret.count)
            defer { wipeBytes(&material) }
            material.withUnsafeMutableBytes { out in
                out.copyBytes(from: "aliyun_v4".utf8)
                UnsafeMutableRawBufferPointer(rebasing: out[9...]).copyMemory(from: secret)
            }
            return SymmetricKey(data: material)
        }
        for part in [day, region, product, "aliyun_v4_request"] {
            key = SymmetricKey(data: HMAC<SHA256>.authenticationCode(for: Data(part.utf8), using: key))
        }
        return key
    }

    /// RFC 3986 unreserved characters stay; everything else is %XX (and `/` too unless kept).
    package static func encode(_ text: String, keepSlash: Bool) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                out.unicodeScalars.append(UnicodeScalar(byte))
            case UInt8(ascii: "/") where keepSlash:
                out += "/"
            default:
                out += String(format: "%%%02X", byte)
            }
        }
        return out
    }

    package static func hex(_ bytes: some Sequence<UInt8>) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }
}
