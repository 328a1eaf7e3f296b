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
                        let sync = channel.pipeline.syncOperations
                        // Bytes after a CONNECT head (or pipelined after a request) stay in the decoder and are handed on.
                        try sync.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes)), name: ProxyConnectionHandler.decoderName)
                        try sync.addHandler(HTTPResponseEncoder(), name: ProxyConnectionHandler.encoderName)
                        try sync.addHandler(ProxyConnectionHandler(client: client, filter: filter, logger: logger))
                    }
                }
        }
    }

    public func stop() async {
        await listener.close()
    }
}

/// One downstream proxy connection, request after request.
///
/// States: `idle` (waiting for a head) → `opening` (the tunnel stream is being opened; the request's body is
/// kept, reading is held) → `forwarding` (request parts go into the stream, response parts come back) → `idle`
/// again when the response has ended and the connection is kept alive. A CONNECT leaves the HTTP handlers behind
/// once it opens (a ``StreamPipe`` takes the socket). Reading is held while the other side cannot take more.
final class ProxyConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart
    static let decoderName = "caid.proxy-decoder"
    static let encoderName = "caid.proxy-encoder"

    private enum State {
        case idle
        case opening(route: ProxyRoute, head: HTTPRequestHead, keepAlive: Bool, queued: [HTTPServerRequestPart])
        case forwarding(exchange: ForwardExchange, keepAlive: Bool, requestEnded: Bool)
        /// A refusal was answered; the rest of that request is dropped, then the connection closes.
        case refusing
        case connected
        case closed
    }

    private let client: TunnelClient
    private let filter: DestinationFilter
    private let logger: Logger
    private var state = State.idle
    private var context: ChannelHandlerContext?
    private var gateOpen = true
    private var heldRead = false
    /// The HTTP version of the request being answered: the response goes back in it.
    private var requestVersion = HTTPVersion.http1_1
    /// Request parts that arrived pipelined while a response was still coming back.
    private var pipelined: [HTTPServerRequestPart] = []

    init(client: TunnelClient, filter: DestinationFilter, logger: Logger) {
        self.client = client
        self.filter = filter
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        receive(unwrapInboundIn(data), context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // A request body goes out as it is read: one flush per read batch.
        if case .forwarding(let exchange, _, _) = state { exchange.flush() }
        context.fireChannelReadComplete()
    }

    private func receive(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch state {
        case .idle:
            guard case .head(let head) = part else { return }
            start(head, context: context)
        case .opening(let route, let head, let keepAlive, var queued):
            queued.append(part)
            state = .opening(route: route, head: head, keepAlive: keepAlive, queued: queued)
        case .forwarding(let exchange, let keepAlive, let requestEnded):
            if requestEnded {
                // Pipelined: the next request waits for this response; reading is held meanwhile.
                pipelined.append(part)
                gate(open: false)
                return
            }
            switch part {
            case .head:
                break
            case .body(let body):
                exchange.send(.body(.byteBuffer(body)))
            case .end(let trailers):
                exchange.send(.end(trailers))
                exchange.flush()
                state = .forwarding(exchange: exchange, keepAlive: keepAlive, requestEnded: true)
            }
        case .refusing:
            if case .end = part { state = .closed; context.close(promise: nil) }
        case .connected, .closed:
            break
        }
    }

    private func start(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        switch ProxyRoute.make(head, filter: filter) {
        case .failure(let problem):
            logger.warning("refused a proxy request for \(head.uri): \(problem.message)")
            refuse(problem.status, problem.message, context: context)
            state = .refusing
        case .success(let route):
            requestVersion = head.version
            state = .opening(route: route, head: head, keepAlive: head.isKeepAlive, queued: [])
            // Nothing more is read until the stream is there; the decoder keeps what already arrived.
            gate(open: false)
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            client.openStream(host: route.host, port: route.port, on: context.eventLoop).whenComplete { result in
                let (handler, context) = loopBound.value
                handler.opened(result, context: context)
            }
        }
    }

    private func opened(_ result: Result<any Channel, any Error>, context: ChannelHandlerContext) {
        guard case .opening(let route, let head, let keepAlive, let queued) = state else {
            // The client went away meanwhile.
            if case .success(let stream) = result { stream.close(promise: nil) }
            return
        }
        let destination = "\(route.host):\(route.port)"
        let stream: any Channel
        switch result {
        case .failure(let error):
            let refused = error is VerificationError
            logger.warning("refused a tunnel to \(destination): \(error)")
            refuse(refused ? .forbidden : .badGateway, refused
                ? "\(destination) did not prove a trusted TEE: \(error)"
                : "cannot open an attested tunnel to \(destination): \(error)", context: context)
            state = queued.contains(where: { if case .end = $0 { true } else { false } }) ? .closed : .refusing
            if case .closed = state { context.close(promise: nil) }
            return
        case .success(let opened):
            stream = opened
        }
        logger.debug("tunnel stream open to \(destination)")
        switch route.kind {
        case .connect:
            becomeConnectPipe(stream: stream, context: context)
        case .forward:
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
                refuse(.badGateway, "cannot set up the tunnel stream to \(destination): \(error)", context: context)
                state = .refusing
                return
            }
            state = .forwarding(exchange: exchange, keepAlive: keepAlive, requestEnded: false)
            exchange.send(.head(ProxyRoute.forwardedHead(head)))
            for part in queued { receive(part, context: context) }
            exchange.flush()
            gate(open: exchange.isWritable)
        }
    }

    /// CONNECT opened: `200 Connection Established`, then the socket is a raw ``StreamPipe`` to the stream, with the
    /// bytes that came after the head (still in the decoder) first.
    private func becomeConnectPipe(stream: any Channel, context: ChannelHandlerContext) {
        state = .connected
        let channel = context.channel
        let socketSide = SocketSide()
        let streamSide = StreamSide()
        do {
            try stream.pipeline.syncOperations.addHandler(streamSide)
            let sync = channel.pipeline.syncOperations
            try sync.addHandler(socketSide)
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
            removed.futureResult.whenComplete { _ in bound.value.flush() }
            channel.read()
        } catch {
            stream.close(promise: nil)
            channel.close(promise: nil)
        }
    }

    // MARK: called by the exchange

    fileprivate func responsePart(_ part: HTTPServerResponsePart) {
        guard let context, case .forwarding(let exchange, var keepAlive, let requestEnded) = state else { return }
        switch part {
        case .head(var head):
            // Hop-by-hop: the service closes its side after each request; the client's connection is ours to keep.
            head.headers.remove(name: "connection")
            head.headers.remove(name: "keep-alive")
            if !(100..<200).contains(head.status.code) {
                head.version = requestVersion
                let delimited = head.headers.contains(name: "content-length") || head.status == .noContent || head.status == .notModified
                // An HTTP/1.0 client cannot take chunks: a response without a length ends with the connection.
                if requestVersion == .http1_0, !delimited { keepAlive = false }
                if !keepAlive {
                    head.headers.add(name: "Connection", value: "close")
                } else if requestVersion == .http1_0 {
                    head.headers.add(name: "Connection", value: "keep-alive")
                }
                state = .forwarding(exchange: exchange, keepAlive: keepAlive, requestEnded: requestEnded)
            }
            context.write(wrapOutboundOut(.head(head)), promise: nil)
        default:
            context.write(wrapOutboundOut(part), promise: nil)
        }
    }

    fileprivate func responseFlush() {
        context?.flush()
    }

    /// The response has ended: the next request may come, or the connection closes.
    fileprivate func exchangeFinished() {
        guard let context, case .forwarding(_, let keepAlive, let requestEnded) = state else { return }
        context.flush()
        guard keepAlive, requestEnded else {
            // The response came before the whole request (or the client wants to close): this connection is done.
            state = .closed
            context.close(mode: .output, promise: nil)
            return
        }
        state = .idle
        gate(open: true)
        let next = pipelined
        pipelined = []
        for part in next { receive(part, context: context) }
    }

    /// The stream failed before the response ended.
    fileprivate func exchangeFailed(responseStarted: Bool, reason: String) {
        guard let context, case .forwarding = state else { return }
        state = .closed
        if responseStarted {
            context.close(promise: nil)
        } else {
            refuse(.badGateway, "the tunnel stream ended without a response: \(reason)", context: context)
        }
    }

    func gate(open: Bool) {
        gateOpen = open
        if open, heldRead, let context {
            heldRead = false
            context.read()
        }
    }

    func read(context: ChannelHandlerContext) {
        if gateOpen { context.read() } else { heldRead = true }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if case .forwarding(let exchange, _, _) = state { exchange.gate(open: context.channel.isWritable) }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            switch state {
            case .idle, .refusing, .closed: context.close(promise: nil)
            default: break  // the response still comes back; the output closes after it
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // The client went away: a stream still open is reset, which frees the service's socket at once.
        if case .forwarding(let exchange, _, _) = state { exchange.cancel() }
        state = .closed
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is HTTPParserError {
            if case .idle = state { refuse(.badRequest, "not an HTTP/1.x proxy request: \(error)", context: context) }
        }
        if case .forwarding(let exchange, _, _) = state { exchange.cancel() }
        state = .closed
        context.close(promise: nil)
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
    private var gateOpen = true
    private var heldRead = false
    private var responseStarted = false
    private var finished = false
    private var linger: Scheduled<Void>?

    init(proxy: NIOLoopBound<ProxyConnectionHandler>) {
        self.proxy = proxy
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !finished else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            // 1xx heads come first, each without an end (NIO's `.forward` strategy); the final head follows.
            responseStarted = true
            proxy.value.responsePart(.head(head))
        case .body(let body):
            proxy.value.responsePart(.body(.byteBuffer(body)))
        case .end(let trailers):
            proxy.value.responsePart(.end(trailers))
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
        proxy.value.gate(open: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if gateOpen { context.read() } else { heldRead = true }
    }

    func channelInactive(context: ChannelHandlerContext) {
        linger?.cancel()
        if !finished {
            finished = true
            proxy.value.exchangeFailed(responseStarted: responseStarted, reason: "the stream closed")
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !finished {
            finished = true
            proxy.value.exchangeFailed(responseStarted: responseStarted, reason: "\(error)")
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
        gateOpen = open
        if open, heldRead, let context {
            heldRead = false
            context.read()
        }
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
