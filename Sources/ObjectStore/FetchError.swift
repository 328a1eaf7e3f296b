import CaidBase
import OSSProtocol

/// Why a fetch failed, in words for the operator; the secret and token never appear in it.
public enum FetchError: Error, Sendable, CustomStringConvertible, ClassifiedFailure {
    /// OSS answered with an error; `qosDelay` is its `x-oss-qos-delay-time` hint in milliseconds.
    case oss(OSSError, qosDelay: Int?)
    /// The bytes did not verify against OSS's size or CRC-64.
    case verification(String)
    /// The object changed while it was being downloaded (412 on If-Match).
    case changed(String)
    /// The connection failed or a body was cut short.
    case transport(String)
    /// The cache directory cannot be written.
    case cache(String)
    /// The cache's filesystem has no room for what is left to download: a wait, not a failure.
    case diskFull(needed: UInt64, path: String)
    /// The bucket's listing is beyond what caid accepts (endless, looping, or adding up past 2^64 bytes).
    case listing(String)
    /// The bucket does not hold the model its manifest describes (a missing, resized or changed object, or a
    /// manifest that is damaged or required and absent): fetching again cannot fix it.
    case manifest(String)

    public var isPermanent: Bool {
        switch self {
        case .oss(let error, _): error.isPermanent
        case .cache, .listing, .manifest: true
        case .verification, .changed, .transport, .diskFull: false
        }
    }

    public var description: String {
        switch self {
        case .oss(let error, _): "\(error)"
        case .verification(let message), .changed(let message), .transport(let message), .cache(let message): message
        case .listing(let message): message + "; restart caid once the bucket is fixed"
        case .manifest(let message): message + "; nothing of this model is measured, attested or mounted; restart caid once the bucket holds the model its manifest describes"
        case .diskFull(let needed, let path):
            "disk full: \(needed) more bytes needed at \(path); the download waits and resumes when there is space (free some, or give CAID_CACHE_DIR a larger filesystem)"
        }
    }
}
