import CaidBase

/// OSS credentials: the secret and the token stay in `Secret`s; the secret reaches only the HMAC.
public struct OSSCredentials: Sendable {
    public var accessKeyID: String
    public var secret: Secret
    public var securityToken: Secret?

    public init(accessKeyID: String, secret: Secret, securityToken: Secret? = nil) {
        self.accessKeyID = accessKeyID
        self.secret = secret
        self.securityToken = securityToken
    }
}

/// What a signer signs of an OSS request.
public struct OSSRequest: Sendable {
    public var method: String
    public var bucket: String?
    public var key: String?
    /// Query parameters, values already decoded; an empty value is signed as the bare key.
    public var query: [(String, String)]
    /// Header names in any case.
    public var headers: [String: String]

    public init(method: String, bucket: String?, key: String?, query: [(String, String)] = [], headers: [String: String] = [:]) {
        self.method = method
        self.bucket = bucket
        self.key = key
        self.query = query
        self.headers = headers
    }
}
