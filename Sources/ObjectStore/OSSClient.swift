import AsyncHTTPClient
import CaidBase
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import OSSProtocol
import Synchronization

/// The thin HTTP layer over the pure signing and parsing: signs each request, sends it, turns OSS errors into
/// ``OSSError``. Re-signs with the server's clock after `RequestTimeTooSkewed`.
public final class OSSClient: Sendable {
    /// How requests are signed.
    public enum Signature: String, Sendable {
        case v4, v1
    }

    public let endpoint: Endpoint
    public let bucket: String
    private let credentials: OSSCredentials
    private let signature: Signature
    private let http: HTTPClient
    private let clockOffset = ClockOffset()
    private let limits: ListingLimits

    public init(
        endpoint: Endpoint, bucket: String, credentials: OSSCredentials, signature: Signature = .v4, http: HTTPClient,
        limits: ListingLimits = ListingLimits()
    ) {
        self.limits = limits
        self.endpoint = endpoint
        self.bucket = bucket
        self.credentials = credentials
        self.signature = signature
        self.http = http
    }

    /// How far a listing may go: a model is a few hundred files, and a bucket answering without end must not keep
    /// caid listing (and growing) forever.
    public struct ListingLimits: Sendable {
        public var objects = 1_000_000
        /// OSS pages hold up to 1000 keys, but may hold fewer.
        public var pages = 10_000
        public init() {}
    }
    /// The longest wait OSS's `x-oss-qos-delay-time` may ask for before a retry.
    public static let maximumQoSDelay = Duration.seconds(10)

    /// Every object under `prefix`, all pages.
    /// - Throws: ``FetchError/listing(_:)`` when the listing goes on past the bounds above or repeats itself.
    public func list(prefix: String) async throws -> [ObjectSummary] {
        var objects: [ObjectSummary] = []
        var token: String?
        var seenTokens: Set<String> = []
        var pages = 0
        repeat {
            pages += 1
            guard pages <= limits.pages, objects.count <= limits.objects else {
                throw FetchError.listing("the listing of \(prefix) goes on past \(objects.count) objects in \(pages - 1) pages; caid lists at most \(limits.objects) objects in \(limits.pages) pages: point MODEL_OSS_BUCKET_PATH at the model's own folder")
            }
            var query = [("list-type", "2"), ("encoding-type", "url"), ("max-keys", "1000"), ("prefix", prefix)]
            if let token { query.append(("continuation-token", token)) }
            let request = OSSRequest(method: "GET", bucket: bucket, key: nil, query: query)
            let page = try await Self.retrying("listing \(prefix)") {
                let response = try await self.send(request)
                let body = try await response.body.collect(upTo: 32 << 20)
                do {
                    return try OSSXML.listPage(Data(body.readableBytesView))
                } catch {
                    throw FetchError.transport("the listing of \(prefix) is malformed: \(error)")
                }
            }
            objects += page.objects
            token = page.nextContinuationToken
            if let token, !seenTokens.insert(token).inserted {
                throw FetchError.listing("the listing of \(prefix) returned the continuation token '\(token.prefix(64))' a second time: the server is looping")
            }
        } while token != nil
        return objects
    }

    /// Starts a ranged GET of `key`, sending `If-Match` so a changed object answers 412.
    /// - Returns: the response, whose status is 200 or 206; anything else is thrown as ``OSSError``.
    public func get(_ key: String, range: String?, ifMatch etag: String?) async throws -> HTTPClientResponse {
        var headers: [String: String] = [:]
        if let range {
            headers["Range"] = range
            headers["x-oss-range-behavior"] = "standard"
        }
        if let etag { headers["If-Match"] = etag }
        return try await send(OSSRequest(method: "GET", bucket: bucket, key: key, headers: headers))
    }

    /// Signs and sends; retries once with the server's clock when OSS says the request time is too skewed.
    private func send(_ request: OSSRequest) async throws -> HTTPClientResponse {
        for attempt in 0..<2 {
            let response = try await http.execute(sign(request), timeout: .seconds(60))
            let status = Int(response.status.code)
            guard status >= 300 else { return response }
            let body = (try? await response.body.collect(upTo: 1 << 20)).map { Data($0.readableBytesView) } ?? Data()
            let requestID = response.headers.first(name: "x-oss-request-id") ?? ""
            let error = request.method == "HEAD" ? OSSXML.headError(header: response.headers.first(name: "x-oss-err") ?? "", status: status, requestID: requestID)
                : OSSXML.error(body, status: status, requestID: requestID)
            if error.code == "RequestTimeTooSkewed", attempt == 0, let serverDate = response.headers.first(name: "Date").flatMap(OSSDate.parseHTTP) {
                clockOffset.set(serverDate.timeIntervalSinceNow)
                continue
            }
            throw FetchError.oss(error, qosDelay: response.headers.first(name: "x-oss-qos-delay-time").flatMap { Int($0) })
        }
        throw FetchError.oss(OSSError(status: 403, code: "RequestTimeTooSkewed", message: "still skewed after re-signing with the server's clock", requestID: ""), qosDelay: nil)
    }

    private func sign(_ request: OSSRequest) -> HTTPClientRequest {
        let now = Date().addingTimeInterval(clockOffset.value)
        let added = switch signature {
        case .v4: SignerV4(region: endpoint.region).sign(request, credentials: credentials, at: now)
        case .v1: SignerV1().sign(request, credentials: credentials, at: now)
        }
        var path = endpoint.pathStyle ? endpoint.bucketURL.path : ""
        path += "/" + (request.key.map { SignerV4.encode($0, keepSlash: true) } ?? "")
        var components = URLComponents(url: endpoint.bucketURL, resolvingAgainstBaseURL: false) ?? URLComponents()
        components.percentEncodedPath = path
        components.percentEncodedQuery = request.query.isEmpty ? nil : request.query
            .map { $0.1.isEmpty ? SignerV4.encode($0.0, keepSlash: false) : "\(SignerV4.encode($0.0, keepSlash: false))=\(SignerV4.encode($0.1, keepSlash: false))" }
            .joined(separator: "&")
        var out = HTTPClientRequest(url: components.url?.absoluteString ?? endpoint.bucketURL.absoluteString)
        out.method = .init(rawValue: request.method)
        for (name, value) in request.headers { out.headers.replaceOrAdd(name: name, value: value) }
        for (name, value) in added { out.headers.replaceOrAdd(name: name, value: value) }
        return out
    }

    /// Runs `operation` until it succeeds, a permanent error, or the last attempt: full-jitter exponential backoff,
    /// or OSS's own `x-oss-qos-delay-time` when it sent one.
    static func retrying<T: Sendable>(
        _ what: String, attempts: Int = 6, logger: Logger? = nil, _ operation: @Sendable () async throws -> T
    ) async throws -> T {
        let schedule = RetrySchedule(attempts: attempts, firstDelay: .milliseconds(400), maximumDelay: .seconds(10), jitter: .full)
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await operation()
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                let failure = error as? FetchError ?? .transport("\(what): \(error)")
                guard !failure.isPermanent, var delay = schedule.delay(after: attempt, random: Double.random(in: 0..<1)) else { throw failure }
                if case .oss(_, let qos?) = failure { delay = min(.milliseconds(max(qos, 0)), maximumQoSDelay) }
                logger?.warning("retrying \(what) in \(delay.formatted) after: \(failure)")
                try await Task.sleep(for: delay)
            }
        }
    }
}

/// The offset between our clock and OSS's, learnt from a skew error.
final class ClockOffset: Sendable {
    private let seconds = Mutex(0.0)
    var value: TimeInterval { seconds.withLock { $0 } }
    func set(_ offset: TimeInterval) { seconds.withLock { $0 = offset } }
}
