import CaidNIO
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import RATLS

/// The HTTP proxy of `caid tunnel` (TNG's `http_proxy` ingress): `CONNECT host:port` tunnels the raw bytes after
/// `200`; any other request goes to the host its `Host` header names, re-sent in origin form with
/// `X-Tng-Http-Forward: true` over a tunnel stream of its own, and its response comes back on the same downstream
/// connection, which stays open for the next request. Everything goes through an attested tunnel; what does not
/// verify, or is not in the destinations to tunnel, is refused with a reason the proxy user can read.
public final class TunnelProxy: Sendable {
    private let client: TunnelClient
    private let logger: Logger
    private let filter: DestinationFilter
    private let listener = Listener()

    public init(client: TunnelClient, filter: DestinationFilter = DestinationFilter(), logger: Logger) {
        self.client = client
        self.filter = filter
        self.logger = logger
    }

    /// Listens on `host:port`. - Returns: the port.
    public func start(host: String, port: Int) async throws -> Int {
        let client = client
        let logger = logger
        let filter = filter
        return try await listener.bind(host: host, port: port) { bootstrap in
            bootstrap
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try ProxyConnectionHandler.configure(channel, openStream: { host, port, loop in
                            client.openStream(host: host, port: port, on: loop)
                        }, filter: filter, logger: logger)
                    }
                }
        }
    }

    public func stop() async {
        await listener.close()
    }
}

/// One downstream proxy connection, request after request, driven by ``ProxyRequestState``: this handler does what
/// its actions say (open the tunnel stream, set HTTP/1 up over it, write, close) and holds the client's reads while
/// the state says so.
final class ProxyConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart
    /// Opens a tunnel stream to `host:port` on the loop (``TunnelClient/openStream(host:port:on:)``; the tests give
    /// their own).
    typealias OpenStream = @Sendable (_ host: String, _ port: Int, _ loop: any EventLoop) -> EventLoopFuture<any Channel>
    static let decoderName = "caid.proxy-decoder"
    static let encoderName = "caid.proxy-encoder"

    private var state: ProxyRequestState
    private let openStream: OpenStream
    private let logger: Logger
    private var context: ChannelHandlerContext?
    /// The forwarded request's stream, while there is one.
    private var exchange: ForwardExchange?
    private var heldRead = false
    private let eofRelay: ConnectEOFRelay

    init(openStream: @escaping OpenStream, filter: DestinationFilter, eofRelay: ConnectEOFRelay, logger: Logger) {
        self.openStream = openStream
        self.eofRelay = eofRelay
        self.state = ProxyRequestState(filter: filter)
        self.logger = logger
    }

    /// The pipeline of one proxy connection: NIO's HTTP/1 server codec and this handler.
    static func configure(_ channel: any Channel, openStream: @escaping OpenStream, filter: DestinationFilter, logger: Logger) throws {
        let sync = channel.pipeline.syncOperations
        let eofRelay = ConnectEOFRelay()
        try sync.addHandler(eofRelay)
        // Bytes after a CONNECT head (or pipelined after a request) stay in the decoder and are handed on.
        try sync.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes)), name: decoderName)
        try sync.addHandler(HTTPResponseEncoder(), name: encoderName)
        try sync.addHandler(ProxyConnectionHandler(openStream: openStream, filter: filter, eofRelay: eofRelay, logger: logger))
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        perform(state.requestPart(unwrapInboundIn(data)), context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // A request body goes out as it is read: one flush per read batch.
        exchange?.flush()
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if state.mayReadClient { context.read() } else { heldRead = true }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        state.clientWritabilityChanged(context.channel.isWritable)
        syncGates(context: context)
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ConnectEOFRelay.ClientEOF {
            perform(state.clientInputClosed(), context: context)
            return
        }
        if let event = event as? ChannelEvent, event == .inputClosed {
            perform(state.clientInputClosed(), context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // The client went away: a stream still open is reset, which frees the service's socket at once.
        perform(state.clientClosed(), context: context)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        perform(state.errorCaught(parserError: error is HTTPParserError, description: "\(error)"), context: context)
    }

    private func perform(_ action: ProxyRequestState.Action, context: ChannelHandlerContext, stream: (any Channel)? = nil) {
        switch action {
        case .none:
            break
        case .openStream(let route):
            // Nothing more is read until the stream is there (the state holds reads); the decoder keeps what already arrived.
            let destination = "\(route.host):\(route.port)"
            eofRelay.connecting = route.kind == .connect
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            openStream(route.host, route.port, context.eventLoop).hop(to: context.eventLoop).whenComplete { result in
                let (handler, context) = loopBound.value
                switch result {
                case .success(let stream):
                    handler.logger.debug("tunnel stream open to \(destination)")
                    handler.perform(handler.state.streamOpened(), context: context, stream: stream)
                case .failure(let error):
                    handler.logger.warning("refused a tunnel to \(destination): \(error)")
                    handler.perform(handler.state.streamFailed(verification: error is VerificationError, reason: "\(error)"), context: context)
                }
            }
        case .refuse(let status, let message, let close):
            logger.warning("refused a proxy request: \(message)")
            refuse(status, message, context: context)
            if close { context.close(promise: nil) }
        case .joinConnect(let inputClosed):
            guard let stream else { break }
            becomeConnectPipe(stream: stream, inputClosed: inputClosed, context: context)
        case .setUpForward:
            guard let stream else { break }
            setUpForward(stream: stream, context: context)
        case .sendUpstream(let parts, let flush):
            for part in parts { exchange?.send(part) }
            if flush { exchange?.flush() }
        case .closeStream:
            stream?.close(promise: nil)
        case .respond(let part):
            context.write(wrapOutboundOut(part), promise: nil)
        case .closeOutput:
            context.flush()
            context.close(mode: .output, promise: nil)
        case .close(let cancelExchange):
            if cancelExchange { cancel() }
            context.close(promise: nil)
        case .cancelExchange:
            cancel()
        case .replay(let parts):
            for part in parts { perform(state.requestPart(part), context: context) }
        }
        syncGates(context: context)
    }

    /// Lets a held read of either side go once the state allows it.
    private func syncGates(context: ChannelHandlerContext) {
        if heldRead, state.mayReadClient {
            heldRead = false
            context.read()
        }
        exchange?.gate(open: state.mayReadUpstream)
    }

    private func cancel() {
        exchange?.cancel()
        exchange = nil
    }

    /// HTTP/1.1 over the stream's DATA, with a ``ForwardExchange`` at the end that relays the response here.
    private func setUpForward(stream: any Channel, context: ChannelHandlerContext) {
        let exchange = ForwardExchange(proxy: NIOLoopBound(self, eventLoop: context.eventLoop))
        do {
            let sync = stream.pipeline.syncOperations
            let codec = StreamDataCodec()
            try sync.addHandler(codec)
            try sync.addHandler(HTTPRequestEncoder())
            try sync.addHandler(ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .forward)))
            exchange.codec = codec
            try sync.addHandler(exchange)
            sync.removeHandler(name: ConnectStreamHandler.name, promise: nil)
        } catch {
            stream.close(promise: nil)
            perform(state.forwardSetupFailed(reason: "\(error)"), context: context)
            return
        }
        self.exchange = exchange
        state.upstreamWritabilityChanged(exchange.isWritable)
        perform(state.forwardSetUp(), context: context)
    }

    /// CONNECT opened: `200 Connection Established`, then the socket is a raw ``StreamPipe`` to the stream, with the
    /// bytes that came after the head (still in the decoder) first, and END_STREAM after them if the client already
    /// sent EOF.
    private func becomeConnectPipe(stream: any Channel, inputClosed: Bool, context: ChannelHandlerContext) {
        let channel = context.channel
        let socketSide = SocketSide()
        let streamSide = StreamSide()
        do {
            try stream.pipeline.syncOperations.addHandler(streamSide)
            let sync = channel.pipeline.syncOperations
            try sync.addHandler(socketSide)
            // From here on the client's EOF is the pipe's.
            sync.removeHandler(eofRelay, promise: nil)
            sync.removeHandler(name: Self.encoderName, promise: nil)
            sync.removeHandler(self, promise: nil)
            StreamPipe.join(socket: socketSide, stream: streamSide)
            channel.writeAndFlush(channel.allocator.buffer(string: "HTTP/1.1 200 Connection Established\r\n\r\n"), promise: nil)
            stream.pipeline.syncOperations.removeHandler(name: ConnectStreamHandler.name, promise: nil)
            // The decoder hands its leftover bytes on (a read, no read-complete) when its removal completes, a tick
            // later: push them out then.
            let removed = channel.eventLoop.makePromise(of: Void.self)
            sync.removeHandler(name: Self.decoderName, promise: removed)
            let bound = NIOLoopBound(streamSide, eventLoop: channel.eventLoop)
            removed.futureResult.whenComplete { _ in
                bound.value.flush()
                if inputClosed { bound.value.end() }
            }
            channel.read()
        } catch {
            stream.close(promise: nil)
            channel.close(promise: nil)
        }
    }

    // MARK: called by the exchange

    fileprivate func responsePart(_ part: HTTPClientResponsePart) {
        guard let context else { return }
        perform(state.responsePart(part), context: context)
    }

    fileprivate func responseFlush() {
        context?.flush()
    }

    fileprivate func upstreamWritabilityChanged(_ writable: Bool) {
        guard let context else { return }
        state.upstreamWritabilityChanged(writable)
        syncGates(context: context)
    }

    /// The response has ended: the next request may come, or the connection closes.
    fileprivate func exchangeFinished() {
        guard let context else { return }
        exchange = nil
        context.flush()
        perform(state.exchangeFinished(), context: context)
    }

    /// The stream failed before the response ended.
    fileprivate func exchangeFailed(reason: String) {
        guard let context else { return }
        exchange = nil
        perform(state.exchangeFailed(reason: reason), context: context)
    }

    private func refuse(_ status: HTTPResponseStatus, _ message: String, context: ChannelHandlerContext) {
        let body = context.channel.allocator.buffer(string: "caid tunnel: \(message)\n")
        var headers = HTTPHeaders([("Content-Type", "text/plain"), ("Content-Length", String(body.readableBytes)), ("Connection", "close")])
        headers.add(name: "Server", value: "caid")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}

/// In front of the request decoder: while a CONNECT stream is opened, the client's EOF goes on as ``ClientEOF``,
/// past the decoder. NIO's `HTTPDecoder.decodeLast` drops the bytes that came after a CONNECT head once it has seen
/// EOF (the left-over strategy runs only without EOF, swift-nio 2.101), and those bytes must reach the pipe, which
/// ends the stream after them (``ProxyRequestState/Action/joinConnect(inputClosed:)``). Any other EOF goes to the
/// decoder, which reports a request cut short.
final class ConnectEOFRelay: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    struct ClientEOF {}
    /// Set while a CONNECT's stream is opened.
    var connecting = false

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if connecting, let closed = event as? ChannelEvent, closed == .inputClosed {
            context.fireUserInboundEventTriggered(ClientEOF())
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}

/// The tunnel-stream end of one forwarded request: HTTP/1.1 over the stream's DATA, the response relayed to the
/// ``ProxyConnectionHandler``. The request goes in with `Connection: close`, so the service ends the stream after
/// answering; once the response has ended, this side ends it too (END_STREAM, never a reset).
final class ForwardExchange: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    private let proxy: NIOLoopBound<ProxyConnectionHandler>
    fileprivate var codec: StreamDataCodec?
    private var context: ChannelHandlerContext?
    /// The response is read while the client can take more.
    private var readGate = ReadGate()
    private var finished = false
    private var linger: Scheduled<Void>?

    init(proxy: NIOLoopBound<ProxyConnectionHandler>) {
        self.proxy = proxy
        _ = readGate.set(open: true)
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !finished else { return }
        let part = unwrapInboundIn(data)
        switch part {
        case .head, .body:
            proxy.value.responsePart(part)
        case .end:
            proxy.value.responsePart(part)
            finished = true
            codec?.endStream()
            // The gateway ends the stream once the service has closed; one that does not is closed here, in time.
            let channel = context.channel
            linger = context.eventLoop.scheduleTask(in: .seconds(30)) { channel.close(promise: nil) }
            proxy.value.exchangeFinished()
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        proxy.value.responseFlush()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // A finished exchange's stream no longer holds the client back (the next request has its own).
        if !finished { proxy.value.upstreamWritabilityChanged(context.channel.isWritable) }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if readGate.request() { context.read() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        linger?.cancel()
        if !finished {
            finished = true
            proxy.value.exchangeFailed(reason: "the stream closed")
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !finished {
            finished = true
            proxy.value.exchangeFailed(reason: "\(error)")
        }
        context.close(promise: nil)
    }

    // MARK: called by the proxy connection

    func send(_ part: HTTPClientRequestPart) {
        context?.write(wrapOutboundOut(part), promise: nil)
    }

    func flush() {
        context?.flush()
    }

    func gate(open: Bool) {
        if readGate.set(open: open), let context { context.read() }
    }

    /// The client went away: reset the stream (the gateway drops the service's connection at once).
    func cancel() {
        finished = true
        context?.close(promise: nil)
    }
}

/// HTTP/1 bytes over an HTTP/2 stream: DATA in and out; END_STREAM in is the input's end (a close-delimited
/// response ends there); ``endStream()`` sends END_STREAM.
final class StreamDataCodec: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = HTTP2Frame.FramePayload

    private var context: ChannelHandlerContext?
    private var ended = false

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .data(let frame):
            if case .byteBuffer(let buffer) = frame.data, buffer.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(buffer)) }
            if frame.endStream { context.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
        case .headers(let headers) where headers.endStream:
            context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        default:
            break
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !ended else { promise?.fail(ChannelError.outputClosed); return }
        context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(unwrapOutboundIn(data))))), promise: promise)
    }

    func endStream() {
        guard let context, !ended else { return }
        ended = true
        context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true))), promise: nil)
    }
}
