import Logging
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization

/// The client side of TNG's tunnel, for `caid tunnel`: one verified TLS 1.3 + HTTP/2 connection per destination,
/// pooled, and a `CONNECT` stream per proxied connection. A connection is used only after ``PeerVerifier`` accepted
/// the gateway's certificate and evidence; a connection that closes is dropped from the pool and the next stream
/// makes (and verifies) a new one.
public final class TunnelClient: Sendable {
    private struct Connection: Sendable {
        var channel: any Channel
        var multiplexer: NIOHTTP2Handler.StreamMultiplexer
    }

    private let verifier: PeerVerifier
    private let logger: Logger
    private let tls: NIOSSLContext
    private let pool = Mutex<[String: EventLoopFuture<Connection>]>([:])

    public init(verifier: PeerVerifier, logger: Logger) throws {
        self.verifier = verifier
        self.logger = logger
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv13
        configuration.maximumTLSVersion = .tlsv13
        configuration.applicationProtocols = ["h2"]
        // The gateway's certificate is self-signed by design; PeerVerifier checks it and its evidence instead.
        configuration.certificateVerification = .none
        tls = try NIOSSLContext(configuration: configuration)
    }

    /// Opens a tunnel stream to `host:port` piped to `socket`. When the gateway answers `200`, `preamble` is written
    /// to the socket and `request` into the stream, and only then does the future succeed; the caller then starts
    /// reading the socket into the stream (``SocketToStreamHandler``).
    func openStream(host: String, port: Int, socket: any Channel, preamble: ByteBuffer?, request: ByteBuffer?) -> EventLoopFuture<any Channel> {
        let loop = socket.eventLoop
        return connection(host: host, port: port, on: loop).flatMap { connection in
            let opened = connection.channel.eventLoop.makePromise(of: Void.self)
            return connection.multiplexer.createStreamChannel { stream in
                stream.eventLoop.makeCompletedFuture {
                    try stream.pipeline.syncOperations.addHandler(
                        ClientStreamHandler(socket: socket, preamble: preamble, request: request, opened: opened))
                }
            }.flatMap { stream in opened.futureResult.map { stream } }
        }.hop(to: loop)
    }

    private func connection(host: String, port: Int, on loop: any EventLoop) -> EventLoopFuture<Connection> {
        let key = "\(host):\(port)"
        return pool.withLock { pool in
            if let existing = pool[key] { return existing }
            let made = connect(host: host, port: port, on: loop)
            pool[key] = made
            return made
        }.flatMapError { @Sendable [self] error in
            // A failed connection is not kept: the next stream tries afresh.
            self.pool.withLock { _ = $0.removeValue(forKey: key) }
            return loop.makeFailedFuture(error)
        }
    }

    private func connect(host: String, port: Int, on loop: any EventLoop) -> EventLoopFuture<Connection> {
        let tls = tls
        let verifier = verifier
        let logger = logger
        let key = "\(host):\(port)"
        return ClientBootstrap(group: loop)
            .connectTimeout(.seconds(10))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: nil))
                }
            }
            .connect(host: host, port: port)
            .flatMap { channel in
                // Wait for the handshake, check ALPN, read the certificate.
                let handshake = channel.eventLoop.makePromise(of: [UInt8].self)
                let added = channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(HandshakeWaiter(promise: handshake))
                    // The gateway's SETTINGS may arrive while its evidence is being checked: keep them for HTTP/2.
                    try channel.pipeline.syncOperations.addHandler(HoldInbound(), name: HoldInbound.name)
                }
                return added.flatMap { handshake.futureResult }.flatMap { der in
                    channel.eventLoop.makeFutureWithTask {
                        try await verifier.verify(certificate: der)
                    }
                }.flatMapThrowing { verdict -> Connection in
                    logger.info("gateway \(key) verified", metadata: ["tee": "\(verdict.tee)"])
                    let multiplexer = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                        mode: .client, connectionConfiguration: .init(), streamConfiguration: .init()
                    ) { stream in stream.eventLoop.makeSucceededVoidFuture() }
                    channel.pipeline.removeHandler(name: HoldInbound.name, promise: nil)
                    return Connection(channel: channel, multiplexer: multiplexer)
                }.flatMapErrorThrowing { error in
                    channel.close(promise: nil)
                    throw error
                }
            }
            .map { [self] connection in
                connection.channel.closeFuture.whenComplete { _ in _ = self.pool.withLock { $0.removeValue(forKey: key) } }
                return connection
            }
    }
}

/// Completes with the server certificate (DER) once the TLS handshake has negotiated `h2`.
private final class HandshakeWaiter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    private let promise: EventLoopPromise<[UInt8]>

    init(promise: EventLoopPromise<[UInt8]>) {
        self.promise = promise
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted(let negotiated) = event {
            guard negotiated == "h2" else {
                promise.fail(VerificationError("the gateway did not agree to ALPN h2 (got \(negotiated ?? "none")): not a TNG gateway"))
                return
            }
            do {
                let handler = try context.pipeline.syncOperations.handler(type: NIOSSLClientHandler.self)
                guard let der = try handler.peerCertificate?.toDERBytes() else { throw VerificationError("the gateway sent no certificate") }
                promise.succeed(der)
            } catch {
                promise.fail(error)
            }
            context.pipeline.syncOperations.removeHandler(self, promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(error)
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(VerificationError("the gateway closed the connection during the TLS handshake (TLS 1.3 with ALPN h2 is required)"))
        context.fireChannelInactive()
    }
}

/// Keeps what arrives until it is removed, then passes it on: bytes the server sends before HTTP/2 is set up.
private final class HoldInbound: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    static let name = "caid.hold-inbound"
    private var held: [NIOAny] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        held.append(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {}

    func removeHandler(context: ChannelHandlerContext, removalToken: ChannelHandlerContext.RemovalToken) {
        let pending = held
        held = []
        for data in pending { context.fireChannelRead(data) }
        if !pending.isEmpty { context.fireChannelReadComplete() }
        context.leavePipeline(removalToken: removalToken)
    }
}

/// A client CONNECT stream: sends `:method CONNECT`, `:authority tng.internal`; on `200` writes the preamble to the
/// socket and the request into the stream; then pipes DATA to the socket and END_STREAM to its half-close.
private final class ClientStreamHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private let socket: any Channel
    private let preamble: ByteBuffer?
    private let request: ByteBuffer?
    private let opened: EventLoopPromise<Void>
    private var open = false

    init(socket: any Channel, preamble: ByteBuffer?, request: ByteBuffer?, opened: EventLoopPromise<Void>) {
        self.socket = socket
        self.preamble = preamble
        self.request = request
        self.opened = opened
    }

    func channelActive(context: ChannelHandlerContext) {
        let headers = HPACKHeaders([(":method", "CONNECT"), (":authority", "tng.internal")])
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers(let headers) where !open:
            let status = headers.headers.first(name: ":status") ?? "?"
            guard status == "200" else {
                opened.fail(VerificationError("the gateway refused the tunnel stream with status \(status)"))
                context.close(promise: nil)
                return
            }
            open = true
            if let preamble { socket.writeAndFlush(preamble, promise: nil) }
            if let request, request.readableBytes > 0 {
                context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(request)))), promise: nil)
            }
            opened.succeed()
        case .data(let frame) where open:
            if case .byteBuffer(let buffer) = frame.data { socket.write(buffer, promise: nil) }
            if frame.endStream { socket.writeAndFlush(ByteBuffer()).whenComplete { [socket] _ in socket.close(mode: .output, promise: nil) } }
        case .rstStream:
            socket.close(promise: nil)
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        socket.flush()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        socket.setOption(ChannelOptions.autoRead, value: context.channel.isWritable).whenComplete { _ in }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        opened.fail(VerificationError("the tunnel stream closed before it opened"))
        socket.close(promise: nil)
        context.fireChannelInactive()
    }
}
