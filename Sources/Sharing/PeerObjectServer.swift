import Foundation
import Gateway
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import ObjectStore

/// Serves this host's verified ciphertext to its sharing peers: `GET /v1/objects/<percent-encoded key>` with one
/// `Range: bytes=a-b` and `If-Match: <ETag>`, over mutually attested TLS. Only objects in the manifest (complete and
/// checked against OSS's CRC-64) are served; plaintext and keys never are.
public final class PeerObjectServer: Sendable {
    /// The largest range one request may ask for.
    public static let maximumRange: UInt64 = 16 << 20

    private let peers: AttestedPeers
    private let cacheDirectory: String
    private let prefix: String
    private let manifestPath: String
    private let logger: Logger
    private let listener = Listener()

    /// - Parameters:
    ///   - cacheDirectory: `CAID_CACHE_DIR/model`; the manifest is `<cacheDirectory>.manifest.json`.
    ///   - prefix: the bucket prefix the object keys start with (the cache holds them without it).
    public init(peers: AttestedPeers, cacheDirectory: String, prefix: String, logger: Logger) {
        self.peers = peers
        self.cacheDirectory = cacheDirectory
        self.prefix = prefix.isEmpty || prefix.hasSuffix("/") ? prefix : prefix + "/"
        self.manifestPath = cacheDirectory + ".manifest.json"
        self.logger = logger
    }

    /// Listens on `host:port`. - Returns: the port.
    public func start(host: String, port: Int) async throws -> Int {
        let peers = peers
        let files = ObjectFiles(cacheDirectory: cacheDirectory, prefix: prefix, manifestPath: manifestPath)
        return try await listener.bind(host: host, port: port) { bootstrap in
            bootstrap.childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let peer = channel.remoteAddress?.ipAddress ?? "unknown"
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(NIOSSLServerHandler(context: peers.serverContext, customVerificationCallback: peers.verification(peer: peer)))
                    try sync.configureHTTPServerPipeline(withErrorHandling: true)
                    try sync.addHandler(ObjectRequestHandler(files: files))
                }
            }
        }
    }

    public func stop() async {
        await listener.close()
    }
}

/// Where verified objects are and what the manifest says about them.
struct ObjectFiles: Sendable {
    let cacheDirectory: String
    let prefix: String
    let manifestPath: String

    enum Answer {
        case bytes(Data, total: UInt64, range: ClosedRange<UInt64>)
        case refused(HTTPResponseStatus, String)
    }

    /// The answer to a request, read from disk (called off the event loop).
    func answer(key: String, range: ClosedRange<UInt64>?, etag: String?) -> Answer {
        let manifest = Manifest.decode((try? Data(contentsOf: URL(fileURLWithPath: manifestPath))) ?? Data())
        guard let path = Fetcher.cachePath(of: key, prefix: prefix, cacheDirectory: cacheDirectory), let entry = manifest.entries[key] else {
            return .refused(.notFound, "not a verified object here")
        }
        if let etag, etag != entry.etag { return .refused(.preconditionFailed, "this host has another version (\(entry.etag))") }
        guard entry.size > 0 else { return .bytes(Data(), total: 0, range: 0...0) }
        let wanted = range ?? 0...(entry.size - 1)
        guard wanted.upperBound < entry.size, wanted.upperBound - wanted.lowerBound < PeerObjectServer.maximumRange else {
            return .refused(.rangeNotSatisfiable, "range outside the object or larger than 16 MiB")
        }
        guard let handle = FileHandle(forReadingAtPath: path) else { return .refused(.notFound, "not in the cache") }
        defer { try? handle.close() }
        do {
            try handle.seek(toOffset: wanted.lowerBound)
            let data = try handle.read(upToCount: Int(wanted.upperBound - wanted.lowerBound + 1)) ?? Data()
            guard data.count == Int(wanted.upperBound - wanted.lowerBound + 1) else { return .refused(.internalServerError, "short read") }
            return .bytes(data, total: entry.size, range: wanted)
        } catch {
            return .refused(.internalServerError, "cannot read the cached object")
        }
    }
}

/// One HTTP/1.1 request at a time on a peer connection.
final class ObjectRequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let files: ObjectFiles
    private var head: HTTPRequestHead?

    init(files: ObjectFiles) {
        self.files = files
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request): head = request
        case .body: break
        case .end:
            guard let request = head else { return }
            head = nil
            respond(to: request, context: context)
        }
    }

    private func respond(to request: HTTPRequestHead, context: ChannelHandlerContext) {
        let prefix = "/v1/objects/"
        guard request.method == .GET, request.uri.hasPrefix(prefix), let key = String(request.uri.dropFirst(prefix.count)).removingPercentEncoding else {
            write(.badRequest, body: Data("expected GET /v1/objects/<key>\n".utf8), headers: [:], context: context)
            return
        }
        var range: ClosedRange<UInt64>?
        if let value = request.headers.first(name: "Range") {
            guard let parsed = Self.parseRange(value) else {
                write(.rangeNotSatisfiable, body: Data("one range bytes=a-b\n".utf8), headers: [:], context: context)
                return
            }
            range = parsed
        }
        let etag = request.headers.first(name: "If-Match")
        let files = files
        let wanted = range
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        NIOThreadPool.singleton.runIfActive(eventLoop: context.eventLoop) {
            files.answer(key: key, range: wanted, etag: etag)
        }.whenComplete { result in
            let (handler, context) = loopBound.value
            switch result {
            case .success(.bytes(let data, let total, let served)):
                handler.write(.partialContent, body: data, headers: ["Content-Range": "bytes \(served.lowerBound)-\(served.upperBound)/\(total)"], context: context)
            case .success(.refused(let status, let reason)):
                handler.write(status, body: Data((reason + "\n").utf8), headers: [:], context: context)
            case .failure:
                handler.write(.serviceUnavailable, body: Data("shutting down\n".utf8), headers: [:], context: context)
            }
        }
    }

    private func write(_ status: HTTPResponseStatus, body: Data, headers extra: [String: String], context: ChannelHandlerContext) {
        var headers = HTTPHeaders([("Content-Length", String(body.count)), ("Content-Type", "application/octet-stream")])
        for (name, value) in extra { headers.add(name: name, value: value) }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    static func parseRange(_ value: String) -> ClosedRange<UInt64>? {
        guard value.hasPrefix("bytes=") else { return nil }
        let bounds = value.dropFirst(6).split(separator: "-", omittingEmptySubsequences: false)
        guard bounds.count == 2, let low = UInt64(bounds[0]), let high = UInt64(bounds[1]), low <= high else { return nil }
        return low...high
    }
}
