import CaidNIO
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOTLS
import ObjectStore
import OSSProtocol
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Serves this host's verified ciphertext to its sharing peers: `GET /v1/objects/<percent-encoded key>` with one
/// `Range: bytes=a-b` and `If-Match: <ETag>`, over mutually attested TLS. Only objects in the manifest (complete and
/// checked against OSS's CRC-64) are served; plaintext and keys never are.
///
/// The port is open to the network, so what a stranger can hold is bounded: at most ``Limits/maxConnections``
/// connections at once (more are closed on accept), a TLS handshake (peer verification included) of at most
/// ``Limits/handshakeTimeout``, and an idle connection for at most ``Limits/idleTimeout``.
public final class PeerObjectServer: Sendable {
    /// The largest range one request may ask for.
    public static let maximumRange: UInt64 = 16 << 20

    /// What one stranger can hold (`CAID_SHARING_MAX_CONNECTIONS`, `CAID_SHARING_HANDSHAKE_TIMEOUT`).
    public struct Limits: Sendable {
        public var maxConnections = 64
        /// From accept to a verified peer; the peer's check with the Attestation Service runs inside it.
        public var handshakeTimeout: Duration = .seconds(30)
        /// No bytes either way for this long closes a verified connection (the client opens one per request).
        public var idleTimeout: Duration = .seconds(120)

        public init() {}
    }

    private let peers: AttestedPeers
    private let cacheDirectory: String
    private let prefix: String
    private let manifestPath: String
    private let limits: Limits
    private let logger: Logger
    private let listener = Listener()
    private let open = Atomic<Int>(0)
    private let refusals = RefusalLog()

    /// - Parameters:
    ///   - cacheDirectory: `CAID_CACHE_DIR/model`; the manifest is `<cacheDirectory>.manifest.json`.
    ///   - prefix: the bucket prefix the object keys start with (the cache holds them without it).
    public init(peers: AttestedPeers, cacheDirectory: String, prefix: String, limits: Limits = Limits(), logger: Logger) {
        self.peers = peers
        self.cacheDirectory = cacheDirectory
        self.prefix = prefix.isEmpty || prefix.hasSuffix("/") ? prefix : prefix + "/"
        self.manifestPath = cacheDirectory + ".manifest.json"
        self.limits = limits
        self.logger = logger
    }

    /// How often the manifest was read and parsed (it is parsed once per change of the file, not per request).
    var manifestParses: Int { files.manifests.parses }

    private var files: ObjectFiles {
        ObjectFiles(cacheDirectory: cacheDirectory, prefix: prefix, manifestPath: manifestPath, manifests: manifests)
    }

    private let manifests = ManifestCache()

    /// Listens on `host:port`. - Returns: the port.
    public func start(host: String, port: Int) async throws -> Int {
        let peers = peers
        let files = files
        let limits = limits
        let logger = logger
        return try await listener.bind(host: host, port: port) { bootstrap in
            bootstrap.childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    let peer = channel.remoteAddress?.ipAddress ?? "unknown"
                    let admitted = open.wrappingAdd(1, ordering: .relaxed).newValue <= limits.maxConnections
                    channel.closeFuture.whenComplete { [self] _ in _ = open.wrappingSubtract(1, ordering: .relaxed) }
                    guard admitted else {
                        refusals.note(logger: logger) { count in
                            "refused \(count) sharing connection(s), the latest from \(peer): \(limits.maxConnections) are open (CAID_SHARING_MAX_CONNECTIONS)"
                        }
                        channel.close(promise: nil)
                        return
                    }
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(NIOSSLServerHandler(context: peers.serverContext, customVerificationCallback: peers.verification(peer: peer)))
                    try sync.addHandler(IdleStateHandler(allTimeout: TimeAmount(limits.idleTimeout)))
                    try sync.addHandler(PeerConnectionDeadline(handshake: limits.handshakeTimeout, idle: limits.idleTimeout, peer: peer, logger: logger))
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

/// The manifest as last parsed, and the identity of the file it came from: the fetcher replaces the file (a new
/// inode, size or mtime) whenever it changes, so a request only stats it.
final class ManifestCache: Sendable {
    private struct State: Sendable {
        var identity: FileStamp?
        var manifest = Manifest()
        var parses = 0
    }

    private let state = Mutex(State())

    var parses: Int { state.withLock { $0.parses } }

    /// The manifest at `path` (empty when it is missing or unreadable).
    func manifest(at path: String) -> Manifest {
        let identity = FileStamp.of(path)
        if let cached = state.withLock({ $0.identity == identity && identity != nil ? $0.manifest : nil }) { return cached }
        let manifest = Manifest.decode((try? Data(contentsOf: URL(fileURLWithPath: path))) ?? Data())
        state.withLock { state in
            state.identity = identity
            state.manifest = manifest
            state.parses += 1
        }
        return manifest
    }
}

/// Logs refusals at most once per 10 s with how many there were, so a flood does not flood the journal.
final class RefusalLog: Sendable {
    private let state = Mutex<(last: ContinuousClock.Instant?, count: Int)>((nil, 0))

    func note(logger: Logger, _ message: (Int) -> String) {
        let now = ContinuousClock.now
        let due = state.withLock { state -> Int? in
            state.count += 1
            if let last = state.last, now - last < .seconds(10) { return nil }
            defer { state = (now, 0) }
            return state.count
        }
        if let due { logger.warning("\(message(due))") }
    }
}

/// Closes a sharing connection whose TLS handshake (with the peer's verification) has not finished within its
/// deadline, and a verified one that stayed idle (`IdleStateHandler`'s event).
final class PeerConnectionDeadline: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let handshake: Duration
    private let idle: Duration
    private let peer: String
    private let logger: Logger
    private var timer: Scheduled<Void>?
    private var established = false

    init(handshake: Duration, idle: Duration, peer: String, logger: Logger) {
        self.handshake = handshake
        self.idle = idle
        self.peer = peer
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let loop = context.eventLoop.assumeIsolated()
        let limit = handshake
        timer = loop.scheduleTask(in: TimeAmount(handshake)) { [self] in
            guard !established else { return }
            logger.info("closing the sharing connection from \(peer): its TLS handshake did not finish in \(limit.components.seconds) s (CAID_SHARING_HANDSHAKE_TIMEOUT)")
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            established = true
            timer?.cancel()
            timer = nil
        } else if let event = event as? IdleStateHandler.IdleStateEvent, event == .all, established {
            logger.debug("closing the sharing connection from \(peer): idle for \(idle.components.seconds) s")
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Where verified objects are and what the manifest says about them.
struct ObjectFiles: Sendable {
    let cacheDirectory: String
    let prefix: String
    let manifestPath: String
    let manifests: ManifestCache

    enum Answer {
        case bytes(Data, total: UInt64, range: ClosedRange<UInt64>)
        case refused(HTTPResponseStatus, String)
    }

    /// The answer to a request, read from disk (called off the event loop).
    func answer(key: String, range: ClosedRange<UInt64>?, etag: String?) -> Answer {
        let manifest = manifests.manifest(at: manifestPath)
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
