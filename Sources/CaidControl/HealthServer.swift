import CaidCore
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Synchronization

/// The health API over HTTP/1.1 on a Unix socket: `/healthz`, `/readyz`, `/status`, `/status?watch`, `/metrics`.
///
/// The socket is created with mode 0660 in a directory created 0750; a stale socket left by a dead caid is
/// replaced, but a socket another process still answers on, or a file that is not a socket, is left alone. With a
/// `group` (`CAID_HEALTH_GROUP`) the socket, and its directory when caid owns it, belong to that group, so its
/// members (a monitoring agent) may probe without root; without one only root may.
public struct HealthServer: Service {
    /// The socket could not be set up; caid cannot run without it.
    public struct SetupError: Error, CustomStringConvertible {
        public var description: String
    }

    private let path: String
    private let registry: HealthRegistry
    private let metrics: HealthMetrics
    private let logger: Logger
    private let group: gid_t?

    public init(path: String, group: gid_t? = nil, registry: HealthRegistry, metrics: HealthMetrics, logger: Logger) {
        self.path = path
        self.group = group
        self.registry = registry
        self.metrics = metrics
        self.logger = logger
    }

    public func run() async throws {
        try Self.prepare(path)
        let registry = self.registry
        let metrics = self.metrics
        let watchers = HealthWatchers()
        let channel: any Channel
        // A thread of its own: probes are answered while the gateway's loops are saturated (a flood of connections
        // or thousands of streams); on the shared loops they waited behind that work for seconds.
        let loop = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { loop.shutdownGracefully { _ in } }
        do {
            channel = try await ServerBootstrap(group: loop)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandler(HealthHTTPHandler(registry: registry, metrics: metrics, watchers: watchers))
                    }
                }
                .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: false)
                .get()
        } catch {
            throw SetupError(description: "cannot listen on \(path): \(error); set CAID_HEALTH_SOCKET to a writable path")
        }
        guard chmod(path, 0o660) == 0 else {
            try? await channel.close()
            throw SetupError(description: "cannot set mode 0660 on \(path): \(String(cString: strerror(errno)))")
        }
        if let group {
            do {
                try Self.share(path, with: group)
            } catch {
                try? await channel.close()
                unlink(path)
                throw error
            }
        }
        logger.info("health socket listening", metadata: ["socket": "\(path)"])
        // caid is ready only once probes can reach it.
        await registry.register("health", required: true)
        await registry.set("health", .running, detail: path)
        try? await gracefulShutdown()
        try? await channel.close()
        unlink(path)
    }

    /// Gives the socket to `group`, and its directory too when caid owns it and others cannot write it (the unit's
    /// `RuntimeDirectory=`, which systemd makes root:root 0750 at every start); a directory owned by someone else is
    /// left as it is, and then it must let the group through itself.
    static func share(_ path: String, with group: gid_t) throws(SetupError) {
        guard chown(path, uid_t.max, group) == 0 else {
            throw SetupError(description: "cannot give \(path) to group \(group) (CAID_HEALTH_GROUP): \(String(cString: strerror(errno)))")
        }
        let parent = (path as NSString).deletingLastPathComponent
        var info = stat()
        guard stat(parent, &info) == 0, info.st_uid == geteuid(), info.st_mode & S_IWOTH == 0 else { return }
        guard chown(parent, uid_t.max, group) == 0, chmod(parent, (info.st_mode & 0o7777 & ~0o020) | 0o010) == 0 else {
            throw SetupError(description: "cannot let group \(group) (CAID_HEALTH_GROUP) through \(parent): \(String(cString: strerror(errno)))")
        }
    }

    /// Creates the parent directory and clears a stale socket.
    static func prepare(_ path: String) throws {
        let parent = (path as NSString).deletingLastPathComponent
        var info = stat()
        if stat(parent, &info) != 0 {
            do {
                try FileManager.default.createDirectory(
                    atPath: parent, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
            } catch {
                throw SetupError(description: "cannot create \(parent) for the health socket: \(error)")
            }
        }
        guard lstat(path, &info) == 0 else { return }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw SetupError(description: "\(path) exists and is not a socket; remove it or set CAID_HEALTH_SOCKET")
        }
        if (try? HealthClient(socketPath: path, timeout: .seconds(1)).get("/healthz")) != nil {
            throw SetupError(description: "another process answers on \(path); is caid already running?")
        }
        unlink(path)
    }
}

/// The watch streams open at once (`/status?watch`): each holds a connection and a task, so they are bounded even
/// though only root and `CAID_HEALTH_GROUP` reach the socket.
public final class HealthWatchers: Sendable {
    /// At most this many at once; more are answered 503.
    public static let limit = 8
    private let open = Atomic<Int>(0)

    init() {}

    func take() -> Bool {
        if open.wrappingAdd(1, ordering: .relaxed).newValue <= Self.limit { return true }
        open.wrappingSubtract(1, ordering: .relaxed)
        return false
    }

    func giveBack() { open.wrappingSubtract(1, ordering: .relaxed) }
}

/// Answers one HTTP request at a time on a health socket connection, or streams the snapshots of a watch.
private final class HealthHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: HealthRegistry
    private let metrics: HealthMetrics
    private let watchers: HealthWatchers
    private var head: HTTPRequestHead?
    private var watch: Task<Void, Never>?

    init(registry: HealthRegistry, metrics: HealthMetrics, watchers: HealthWatchers) {
        self.registry = registry
        self.metrics = metrics
        self.watchers = watchers
    }

    func channelInactive(context: ChannelHandlerContext) {
        watch?.cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head, watch == nil else { return }
            self.head = nil
            if HealthRoutes.watches(method: head.method.rawValue, path: head.uri) {
                guard watchers.take() else { return Self.write(HealthRoutes.tooManyWatchers, for: head, context: context) }
                startWatch(head, context: context)
                return
            }
            let registry = self.registry
            let metrics = self.metrics
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.eventLoop.makeFutureWithTask {
                let snapshot = await registry.snapshot()
                return HealthRoutes.respond(method: head.method.rawValue, path: head.uri, snapshot: snapshot) {
                    metrics.render(snapshot)
                }
            }.whenSuccess { response in
                Self.write(response, for: head, context: loopBound.value)
            }
        }
    }

    /// The head, then a line per snapshot, each written once the one before has gone out: a slow reader is sent
    /// the latest snapshot, not a backlog (``HealthRegistry/updates()`` keeps only the newest).
    private func startWatch(_ request: HTTPRequestHead, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/x-ndjson")
        headers.add(name: "Cache-Control", value: "no-store")
        headers.add(name: "Connection", value: "close")
        // No length: the body ends when the connection does (HTTP/1.0), or is chunked (HTTP/1.1).
        let head = HTTPResponseHead(version: request.version, status: .ok, headers: headers)
        context.writeAndFlush(NIOAny(HTTPServerResponsePart.head(head)), promise: nil)
        let channel = context.channel
        let registry = self.registry
        let watchers = self.watchers
        watch = Task {
            defer { watchers.giveBack() }
            for await snapshot in await registry.updates() {
                let line = ByteBuffer(bytes: HealthRoutes.encodeLine(snapshot))
                do { try await channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(line))) } catch { break }
            }
            channel.close(promise: nil)
        }
    }

    private static func write(_ response: HealthRoutes.Response, for request: HTTPRequestHead, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.count))
        headers.add(name: "Cache-Control", value: "no-store")
        let keepAlive = request.isKeepAlive
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        let head = HTTPResponseHead(version: request.version, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
        context.write(NIOAny(HTTPServerResponsePart.head(head)), promise: nil)
        if request.method != .HEAD {
            context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: response.body)))), promise: nil)
        }
        let done = context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
