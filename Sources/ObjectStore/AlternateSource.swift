/// Somewhere other than OSS that may hold an object's bytes: a sharing peer. What it gives is verified exactly like
/// OSS's bytes (the object's CRC-64 must equal the one OSS reports), so it can slow a download down but never change
/// what is mounted.
public protocol AlternateSource: Sendable {
    /// The bytes of `range` of `key` at version `etag` and who gave them, or nil to take them from OSS.
    func fetch(key: String, etag: String, range: ClosedRange<UInt64>) async -> (bytes: [UInt8], from: String)?
    /// `from` gave bytes for `key` that did not verify: avoid it.
    func distrust(_ from: String, key: String)
}
