import CaidBase
import Crypto
import Foundation

/// OSS Signature V1 (`OSS <AccessKeyId>:<base64 HMAC-SHA1>`), for accounts that still require it.
public struct SignerV1: Sendable {
    /// Query parameters that are part of the signed resource; all others are not signed in V1.
    static let subresources: Set<String> = [
        "acl", "bucketInfo", "location", "stat", "delete", "append", "tagging", "objectMeta", "uploads", "uploadId",
        "partNumber", "security-token", "position", "response-content-type", "response-content-language",
        "response-expires", "response-cache-control", "response-content-disposition", "response-content-encoding",
        "restore", "callback", "callback-var", "versions", "versioning", "versionId", "sequential",
        "continuation-token", "regionList", "cloudboxes", "symlink", "resourceGroup",
    ]

    public init() {}

    /// The headers to add: `Date`, `x-oss-security-token` when set, and `Authorization`.
    public func sign(_ request: OSSRequest, credentials: OSSCredentials, at date: Date) -> [String: String] {
        var headers = request.headers
        var added: [String: String] = [:]
        if headers.keys.first(where: { $0.lowercased() == "date" }) == nil {
            added["Date"] = OSSDate.http(date)
            headers["Date"] = added["Date"]
        }
        if let token = credentials.securityToken, !token.isEmpty {
            added["x-oss-security-token"] = token.withBytes { String(decoding: $0, as: UTF8.self) }
            headers["x-oss-security-token"] = added["x-oss-security-token"]
        }
        let signature = credentials.secret.withBytes { secret in
            Data(HMAC<Insecure.SHA1>.authenticationCode(for: Data(stringToSign(request, headers: headers).utf8), using: SymmetricKey(data: secret)))
                .base64EncodedString()
        }
        added["Authorization"] = "OSS \(credentials.accessKeyID):\(signature)"
        return added
    }

    /// VERB, Content-MD5, Content-Type, Date (x-oss-date wins), the x-oss-* headers, the resource with subresources.
    func stringToSign(_ request: OSSRequest, headers: [String: String]) -> String {
        let lower = Dictionary(headers.map { ($0.key.lowercased(), $0.value) }, uniquingKeysWith: { first, _ in first })
        var resource = "/"
        if let bucket = request.bucket {
            resource += bucket + "/"
            if let key = request.key { resource += key }
        }
        let signed = request.query.filter { Self.subresources.contains($0.0) }.sorted { $0.0 < $1.0 }
        if !signed.isEmpty {
            resource += "?" + signed.map { $0.1.isEmpty ? $0.0 : "\($0.0)=\($0.1)" }.joined(separator: "&")
        }
        let ossHeaders = lower.filter { $0.key.hasPrefix("x-oss-") }.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)\n" }.joined()
        let date = lower["x-oss-date"] ?? lower["date"] ?? ""
        return "\(request.method)\n\(lower["content-md5"] ?? "")\n\(lower["content-type"] ?? "")\n\(date)\n\(ossHeaders)\(resource)"
    }
}
