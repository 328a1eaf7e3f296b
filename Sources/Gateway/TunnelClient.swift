import AttestationService
import Foundation
import Crypto
import Logging
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL
import NIOTLS
import RATLS
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Why a tunnel stream did not open, in words for the proxy user. Verification failures are ``VerificationError``.
public enum TunnelError: Error, Sendable, CustomStringConvertible {
    /// The gateway answered the CONNECT with another status (502: its service is down).
    case refused(destination: String, status: String)
    /// The stream or its connection closed before the gateway answered: safe to try again on a new connection,
    /// because nothing of the request has been sent yet.
    case closedBeforeOpen(destination: String, reason: String)
    /// No answer in time.
    case timedOut(destination: String, after: Duration)
    /// TCP or TLS failed.
    case unreachable(destination: String, underlying: String)

    var retryable: Bool {
        if case .closedBeforeOpen = self { return true }
        return false
    }

    public var description: String {
        switch self {
        case .refused(let destination, let status): "the gateway at \(destination) refused the tunnel stream with status \(status)"
        case .closedBeforeOpen(let destination, let reason): "the tunnel to \(destination) closed before the stream opened (\(reason))"
        case .timedOut(let destination, let after): "no tunnel to \(destination) within \(after) (TCP, TLS, attestation and the gateway's answer)"
        case .unreachable(let destination, let underlying): "cannot reach \(destination): \(underlying)"
        }
    }
}

/// The client side of TNG's tunnel, for `caid tunnel`: verified TLS 1.3 + HTTP/2 connections, pooled per
/// destination and event loop, and a `CONNECT` stream per proxied connection or request.
///
/// - A connection is used only after ``PeerVerifier`` accepted the gateway's certificate and evidence.
/// - One connection per event loop, so a proxy socket and its stream never hop between threads. The verdict for a
///   certificate is reused for ``Options/verdictLifetime`` (each TLS handshake still proves the gateway holds that
///   certificate's key), so the loops of one process cost one attestation.
/// - GOAWAY: the connection takes no new streams, its open streams finish, it closes when the last one does, and the
///   next stream opens (and verifies) a new connection. A stream the gateway never answered is tried again there (``maxTries``).
/// - Every stream has a deadline to open.
public final class TunnelClient: Sendable {
    public struct Options: Sendable {
        /// From asking for a stream to the gateway's `200`: TCP, TLS, the Attestation Service (30 s) and the answer.
        public var streamOpenTimeout: Duration = .seconds(60)
        public var connectTimeout: Duration = .seconds(10)
        /// How long a verified certificate is trusted for new connections of this process.
        public var verdictLifetime: Duration = .seconds(60)
        /// SO_MARK on the tunnel's sockets, so that TNG's or caid's own nat rules on this host leave them alone.
        public var mark: UInt32? = NatRules.mark
        /// RST_STREAM frames the gateway may send in `resetWindow` before the connection is closed.
        public var maxResets = 2_000
        public var resetWindow: Duration = .seconds(10)
        public init() {}
    }

    struct Connection: Sendable {
        var channel: any Channel
        var multiplexer: NIOHTTP2Handler.StreamMultiplexer
    }

    private struct PoolKey: Hashable {
        var destination: String
        var loop: ObjectIdentifier
    }

    private struct Pooled: Sendable {
        var id: Int
        var connection: EventLoopFuture<Connection>
    }

    /// A stream the gateway never answered (refused, or its connection went away) is tried on a new connection, up
    /// to this many times in all, within the deadline: nothing of the request has been sent yet.
    static let maxTries = 4

    private let verifier: PeerVerifier
    private let logger: Logger
    private let tls: NIOSSLContext
    private let options: Options
    private let pool = Mutex<[PoolKey: Pooled]>([:])
    private let nextID = Atomic<Int>(0)
    private let verdicts = Mutex<[[UInt8]: (verdict: PeerVerifier.Verdict, until: ContinuousClock.Instant)]>([:])

    public init(verifier: PeerVerifier, logger: Logger, options: Options = Options()) throws {
        self.verifier = verifier
        self.logger = logger
        var options = options
        if let mark = options.mark, !Self.canMark(mark) {
            logger.warning("cannot set SO_MARK \(mark) on the tunnel's sockets (needs CAP_NET_ADMIN); nat rules on this host that skip marked traffic will not skip them")
            options.mark = nil
        }
        self.options = options
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv13
        configuration.maximumTLSVersion = .tlsv13
        configuration.applicationProtocols = ["h2"]
        // The gateway's certificate is self-signed by design; PeerVerifier checks it and its evidence instead.
        configuration.certificateVerification = .none
        tls = try NIOSSLContext(configuration: configuration)
    }

    /// Whether this process may mark sockets (SO_MARK needs CAP_NET_ADMIN).
    private static func canMark(_ mark: UInt32) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var value = mark
        return setsockopt(fd, SOL_SOCKET, SO_MARK, &value, socklen_t(MemoryLayout<UInt32>.size)) == 0
    }

    /// Opens a tunnel stream to `host:port` on `loop` and succeeds once the gateway answered `200`. The stream's
    /// pipeline then holds only a handler named ``ConnectStreamHandler/name`` that keeps what arrives after the
    /// answer: add your handlers, then remove it (in the same callback, on `loop`), and it hands over what it kept.
    func openStream(host: String, port: Int, on loop: any EventLoop) -> EventLoopFuture<any Channel> {
        let destination = "\(host):\(port)"
        let promise = loop.makePromise(of: (any Channel).self)
        let attempt = NIOLoopBound(OpenAttempt(), eventLoop: loop)
        let timeout = options.streamOpenTimeout
        let deadline = loop.scheduleTask(in: TimeAmount(timeout)) {
            attempt.value.finished = true
            attempt.value.stream?.close(promise: nil)
            promise.fail(TunnelError.timedOut(destination: destination, after: timeout))
        }
        promise.futureResult.whenComplete { _ in deadline.cancel() }

        @Sendable func run(_ round: Int) {
            connection(host: host, port: port, on: loop).flatMap { connection in
                self.stream(on: connection, destination: destination, attempt: attempt)
            }.hop(to: loop).whenComplete { result in
                guard !attempt.value.finished else {
                    if case .success(let stream) = result { stream.close(promise: nil) }
                    return
                }
                switch result {
                case .success(let stream):
                    attempt.value.finished = true
                    promise.succeed(stream)
                case .failure(let error as TunnelError) where error.retryable && round < Self.maxTries:
                    self.logger.debug("retrying a tunnel stream on a new connection: \(error)")
                    run(round + 1)
                case .failure(let error):
                    attempt.value.finished = true
                    promise.fail(error)
                }
            }
        }
        run(1)
        return promise.futureResult
    }

    private func stream(on connection: Connection, destination: String, attempt: NIOLoopBound<OpenAttempt>) -> EventLoopFuture<any Channel> {
        let opened = connection.channel.eventLoop.makePromise(of: Void.self)
        return connection.multiplexer.createStreamChannel { stream in
            stream.eventLoop.makeCompletedFuture {
                attempt.value.stream = stream
                try stream.pipeline.syncOperations.addHandler(ConnectStreamHandler(destination: destination, opened: opened), name: ConnectStreamHandler.name)
            }
        }.flatMapError { error in
            // No stream (the connection closed or went away first): the handler that would answer never came.
            let failure = TunnelError.closedBeforeOpen(destination: destination, reason: "\(error)")
            opened.fail(failure)
            return connection.channel.eventLoop.makeFailedFuture(failure)
        }.flatMap { stream in opened.futureResult.map { stream } }
    }

    private func connection(host: String, port: Int, on loop: any EventLoop) -> EventLoopFuture<Connection> {
        let key = PoolKey(destination: "\(host):\(port)", loop: ObjectIdentifier(loop))
        let id = nextID.wrappingAdd(1, ordering: .relaxed).newValue
        let pooled = pool.withLock { pool in
            if let existing = pool[key] { return existing }
            let made = Pooled(id: id, connection: connect(host: host, port: port, on: loop, key: key, id: id))
            pool[key] = made
            return made
        }
        return pooled.connection.flatMapError { [self] error in
            // A failed connection is not kept: the next stream tries afresh.
            self.drop(key, id: pooled.id)
            return loop.makeFailedFuture(error)
        }
    }

    /// Takes a connection out of the pool (it closed, or said GOAWAY), if it is still the pooled one.
    private func drop(_ key: PoolKey, id: Int) {
        pool.withLock { pool in
            if pool[key]?.id == id { pool.removeValue(forKey: key) }
        }
    }

    private func connect(host: String, port: Int, on loop: any EventLoop, key: PoolKey, id: Int) -> EventLoopFuture<Connection> {
        let tls = tls
        let logger = logger
        let destination = key.destination
        let options = options
        var bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(TimeAmount(options.connectTimeout))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: nil))
                }
            }
        if let mark = options.mark {
            bootstrap = bootstrap.channelOption(
                ChannelOptions.Types.SocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_MARK)),
                value: SocketOptionValue(mark))
        }
        return bootstrap.connect(host: host, port: port)
            .flatMapErrorThrowing { error in throw TunnelError.unreachable(destination: destination, underlying: "\(error)") }
            .flatMap { channel in
                // A connection that is not verified in time is dropped (the stream deadline fails the request).
                let unverified = channel.eventLoop.scheduleTask(in: TimeAmount(options.streamOpenTimeout)) { channel.close(promise: nil) }
                return channel.eventLoop.makeCompletedFuture { () throws -> EventLoopFuture<Connection> in
                    try Self.addAttestedSetup(
                        to: channel,
                        certificate: { channel in
                            let handler = try channel.pipeline.syncOperations.handler(type: NIOSSLClientHandler.self)
                            guard let der = try handler.peerCertificate?.toDERBytes() else { throw VerificationError("the gateway sent no certificate") }
                            return der
                        },
                        verify: { channel, der in channel.eventLoop.makeFutureWithTask { try await self.verify(der) } },
                        configure: { [self] (channel: any Channel, verdict: PeerVerifier.Verdict) throws -> Connection in
                            logger.info("gateway \(destination) verified", metadata: ["tee": "\(verdict.tee)"])
                            return Connection(channel: channel, multiplexer: try Self.configureHTTP2(channel, options: options, logger: logger) {
                                // GOAWAY: no new streams here.
                                self.drop(key, id: id)
                            })
                        })
                }.flatMap { $0 }.flatMapErrorThrowing { error in
                    unverified.cancel()
                    channel.close(promise: nil)
                    throw error
                }.map { connection in
                    unverified.cancel()
                    return connection
                }
            }
            .map { [self] connection in
                connection.channel.closeFuture.whenComplete { _ in self.drop(key, id: id) }
                return connection
            }
    }

    /// Sets up a new connection with NIO's ALPN handler: once the TLS handshake is done, ALPN must have chosen `h2`,
    /// then the gateway's certificate (and its evidence) is verified, then `configure` sets up HTTP/2. Until then
    /// nothing is written, and what the gateway sends (its SETTINGS) is kept by the handler and passed on to the
    /// HTTP/2 handlers afterwards. - Returns: what `configure` made.
    ///
    /// The result is the verification's, even when the gateway closes meanwhile (a plain TLS server may): NIO's
    /// handler fails at once on a close, which says less than the verdict. A close before the handshake completes
    /// is a ``VerificationError``: the peer did not take TLS 1.3 with `h2`.
    static func addAttestedSetup<Verdict: Sendable, Result: Sendable>(
        to channel: any Channel,
        certificate: @escaping (any Channel) throws -> [UInt8],
        verify: @escaping (any Channel, [UInt8]) -> EventLoopFuture<Verdict>,
        configure: @escaping @Sendable (any Channel, Verdict) throws -> Result
    ) throws -> EventLoopFuture<Result> {
        let result = channel.eventLoop.makePromise(of: Result.self)
        let handshakeDone = NIOLoopBoundBox(false, eventLoop: channel.eventLoop)
        let handler = NIOTypedApplicationProtocolNegotiationHandler<Result> { alpn, channel in
            handshakeDone.value = true
            let setUp: EventLoopFuture<Result>
            if case .negotiated("h2") = alpn {
                do {
                    let der = try certificate(channel)
                    setUp = verify(channel, der).flatMapThrowing { verdict in try configure(channel, verdict) }
                } catch {
                    setUp = channel.eventLoop.makeFailedFuture(error)
                }
            } else {
                let got = if case .negotiated(let name) = alpn { name } else { "none" }
                setUp = channel.eventLoop.makeFailedFuture(VerificationError("the gateway did not agree to ALPN h2 (got \(got)): not a TNG gateway"))
            }
            setUp.cascade(to: result)
            return setUp
        }
        try channel.pipeline.syncOperations.addHandler(handler)
        handler.protocolNegotiationResult.whenFailure { error in
            guard !handshakeDone.value else { return }
            if let closed = error as? ChannelError, closed == .outputClosed {
                result.fail(VerificationError("the gateway closed the connection during the TLS handshake (TLS 1.3 with ALPN h2 is required)"))
            } else {
                result.fail(error)
            }
        }
        return result.futureResult
    }

    /// The verdict for `der`: a fresh one from the Attestation Service, or a recent one for the same certificate.
    private func verify(_ der: [UInt8]) async throws -> PeerVerifier.Verdict {
        let digest = Array(SHA256.hash(data: der))
        let now = ContinuousClock.now
        if let cached = verdicts.withLock({ cache -> PeerVerifier.Verdict? in
            cache = cache.filter { $0.value.until > now }
            return cache[digest]?.verdict
        }) {
            return cached
        }
        let verdict = try await verifier.verify(certificate: der)
        // Never past the certificate's own notAfter.
        let left = Duration.milliseconds(Int64(max(0, min(verdict.notAfter.timeIntervalSinceNow, 1e9)) * 1000))
        let lifetime = min(options.verdictLifetime, left)
        verdicts.withLock { $0[digest] = (verdict, ContinuousClock.now + lifetime) }
        return verdict
    }

    /// HTTP/2 on a verified connection: wide windows, a deliberate reset limit, GOAWAY handling.
    private static func configureHTTP2(_ channel: any Channel, options: Options, logger: Logger, goingAway: @escaping @Sendable () -> Void) throws -> NIOHTTP2Handler.StreamMultiplexer {
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: 100),
            HTTP2Setting(parameter: .initialWindowSize, value: TunnelWindows.stream),
            HTTP2Setting(parameter: .maxHeaderListSize, value: 16 << 10),
        ]
        connection.targetWindowSize = TunnelWindows.connection
        var stream = NIOHTTP2Handler.StreamConfiguration()
        stream.targetWindowSize = TunnelWindows.stream
        stream.outboundBufferSizeHighWatermark = TunnelWindows.streamHighWatermark
        stream.outboundBufferSizeLowWatermark = TunnelWindows.streamLowWatermark
        stream.streamResetFrameRateLimit.maximumCount = options.maxResets
        stream.streamResetFrameRateLimit.windowLength = TimeAmount(options.resetWindow)
        let sync = channel.pipeline.syncOperations
        let goAway = GoAwayHandler(goingAway: goingAway, logger: logger)
        let multiplexer = try sync.configureHTTP2Pipeline(
            mode: .client, connectionConfiguration: connection, streamConfiguration: stream,
            streamDelegate: StreamCounter(handler: NIOLoopBound(goAway, eventLoop: channel.eventLoop))
        ) { stream in stream.eventLoop.makeSucceededVoidFuture() }
        try sync.addHandler(goAway)
        try sync.addHandler(ClosingOnConnectionError(peer: "the gateway", logger: logger))
        return multiplexer
    }
}

/// One `openStream` call: whether it is over, and the stream of its current try (closed by the deadline).
private final class OpenAttempt {
    var finished = false
    var stream: (any Channel)?
}

/// Watches a client connection for GOAWAY: takes it out of the pool at once, and closes it when its last stream
/// ends (swift-nio-http2 leaves a connection open after GOAWAY).
private final class GoAwayHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame

    private let goingAway: @Sendable () -> Void
    private let logger: Logger
    private var openStreams = 0
    private var draining = false
    private var context: ChannelHandlerContext?

    init(goingAway: @escaping @Sendable () -> Void, logger: Logger) {
        self.goingAway = goingAway
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    fileprivate func streamCreated() {
        openStreams += 1
    }

    fileprivate func streamClosed() {
        openStreams -= 1
        if draining, openStreams <= 0 { context?.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if case .goAway(let lastStreamID, let code, _) = frame.payload, !draining {
            draining = true
            logger.info("the gateway sent GOAWAY (\(code), last stream \(lastStreamID)); new streams go to a new connection")
            goingAway()
            if openStreams == 0 { context.close(promise: nil) }
        }
        context.fireChannelRead(data)
    }
}

/// Counts a connection's streams for its ``GoAwayHandler`` (called on the connection's loop).
private struct StreamCounter: NIOHTTP2StreamDelegate {
    let handler: NIOLoopBound<GoAwayHandler>

    func streamCreated(_ id: HTTP2StreamID, channel: any Channel) { handler.value.streamCreated() }
    func streamClosed(_ id: HTTP2StreamID, channel: any Channel) { handler.value.streamClosed() }
}

/// A client CONNECT stream until the gateway answers: sends `:method CONNECT`, `:authority tng.internal` (what TNG's
/// ingress sends); `200` opens it. Frames after the answer are kept until the caller's handlers are in place.
final class ConnectStreamHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload
    static let name = "caid.tunnel-connect"

    private let destination: String
    private let opened: EventLoopPromise<Void>
    private var open = false
    private var held: [NIOAny] = []
    private var readCompletePending = false

    init(destination: String, opened: EventLoopPromise<Void>) {
        self.destination = destination
        self.opened = opened
    }

    func channelActive(context: ChannelHandlerContext) {
        let headers = HPACKHeaders([(":method", "CONNECT"), (":authority", "tng.internal")])
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !open else {
            held.append(data)
            return
        }
        switch unwrapInboundIn(data) {
        case .headers(let headers):
            let status = headers.headers.first(name: ":status") ?? "?"
            guard status == "200" else {
                opened.fail(TunnelError.refused(destination: destination, status: status))
                context.close(promise: nil)
                return
            }
            open = true
            opened.succeed()
        case .rstStream(let code):
            opened.fail(TunnelError.closedBeforeOpen(destination: destination, reason: "the gateway reset the stream (\(code))"))
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if open, !held.isEmpty { readCompletePending = true } else { context.fireChannelReadComplete() }
    }

    func removeHandler(context: ChannelHandlerContext, removalToken: ChannelHandlerContext.RemovalToken) {
        let pending = held
        held = []
        for data in pending { context.fireChannelRead(data) }
        if !pending.isEmpty || readCompletePending { context.fireChannelReadComplete() }
        context.leavePipeline(removalToken: removalToken)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        opened.fail(TunnelError.closedBeforeOpen(destination: destination, reason: "\(error)"))
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        opened.fail(TunnelError.closedBeforeOpen(destination: destination, reason: "the stream or its connection closed"))
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        opened.fail(TunnelError.closedBeforeOpen(destination: destination, reason: "the stream was torn down"))
    }
}
