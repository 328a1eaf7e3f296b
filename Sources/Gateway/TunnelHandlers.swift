import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix

/// The gateway's stream handler for code outside the module that must drive it exactly (the CONNECT-headers fuzz
/// target in CaidFuzzTargets), without making the handler itself public.
package enum TunnelStreamHandlers {
    package static func make(
        upstream: @escaping @Sendable (any EventLoop) -> EventLoopFuture<any Channel>, idleTimeout: TimeAmount = .seconds(300)
    ) -> any ChannelHandler {
        TunnelStreamHandler(upstream: upstream, idleTimeout: idleTimeout)
    }
}

/// One HTTP/2 stream of the gateway, driven by ``TunnelStreamState``: a `CONNECT` is answered `200` once the
/// upstream TCP connection is open, and from then on the stream's DATA and the upstream bytes are piped both ways
/// with back-pressure; END_STREAM and TCP half-close map onto each other. Anything but CONNECT gets `400`.
///
/// The stream, its upstream connection and both handlers live on one event loop; once the service answers, the
/// stream is handed to a ``StreamPipe`` and this handler leaves.
final class TunnelStreamHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private var state = TunnelStreamState()
    private let upstream: @Sendable (any EventLoop) -> EventLoopFuture<any Channel>
    private let idleTimeout: TimeAmount

    /// - Parameters:
    ///   - upstream: opens the upstream connection (mapping: the service; netfilter: the original destination) on
    ///     the given loop, not reading until the pipe is joined.
    ///   - idleTimeout: how long the piped stream may carry no bytes either way before it is reset.
    init(upstream: @escaping @Sendable (any EventLoop) -> EventLoopFuture<any Channel>, idleTimeout: TimeAmount) {
        self.upstream = upstream
        self.idleTimeout = idleTimeout
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers(let headers):
            perform(state.headersReceived(method: headers.headers.first(name: ":method"), endStream: headers.endStream), context: context)
        case .data(let frame):
            let buffer: ByteBuffer? = if case .byteBuffer(let buffer) = frame.data { buffer } else { nil }
            perform(state.dataReceived(buffer, endStream: frame.endStream), context: context)
        case .rstStream:
            state.streamEnded()
        default:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Reset or closed while the service was dialled: the upstream is closed when it answers.
        state.streamEnded()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        perform(state.errorCaught(), context: context)
    }

    private func perform(_ action: TunnelStreamState.Action, context: ChannelHandlerContext, upstream channel: (any Channel)? = nil) {
        switch action {
        case .none:
            break
        case .dial:
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            upstream(context.eventLoop).hop(to: context.eventLoop).whenComplete { result in
                let (handler, context) = loopBound.value
                switch result {
                case .success(let channel): handler.perform(handler.state.upstreamConnected(), context: context, upstream: channel)
                case .failure: handler.perform(handler.state.upstreamFailed(), context: context)
                }
            }
        case .refuse(let status, let message):
            let headers = HPACKHeaders([(":status", status), ("server", "tng"), ("content-type", "text/plain")])
            context.write(wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
            let body = context.channel.allocator.buffer(string: message)
            context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(body), endStream: true))), promise: nil)
        case .closeUpstream:
            channel?.close(promise: nil)
        case .closeStream:
            context.close(promise: nil)
        case .join(let pending, let ended):
            guard let channel else { return }
            join(channel, pending: pending, ended: ended, context: context)
        }
    }

    private func join(_ channel: any Channel, pending: [ByteBuffer], ended: Bool, context: ChannelHandlerContext) {
        guard context.channel.isActive else {
            // Gone without an event this handler saw (the connection under the stream closed): drop the service.
            state.streamEnded()
            channel.close(promise: nil)
            return
        }
        let socketSide = SocketSide()
        let streamSide = StreamSide()
        do {
            // On the upstream socket, where every byte of the stream passes either way.
            try channel.pipeline.syncOperations.addHandler(ClosingWhenIdle(timeout: idleTimeout))
            try channel.pipeline.syncOperations.addHandler(socketSide)
            try context.pipeline.syncOperations.addHandler(streamSide)
        } catch {
            channel.close(promise: nil)
            perform(state.joinFailed(), context: context)
            return
        }
        let headers = HPACKHeaders([(":status", "200"), ("server", "tng")])
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
        for buffer in pending { channel.write(buffer, promise: nil) }
        channel.flush()
        StreamPipe.join(socket: socketSide, stream: streamSide)
        if ended { socketSide.end() }
        context.pipeline.syncOperations.removeHandler(self, promise: nil)
        // Both sides were held still until the pipe was complete; now let bytes flow.
        channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
        context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
        context.channel.read()
    }
}


/// Closes the upstream socket of a stream that carried no bytes either way for `timeout`; the ``StreamPipe`` then
/// resets the stream.
///
/// Not NIO's `IdleStateHandler`: this handler is added to a socket that is already active, from the connect promise,
/// which NIO fulfils before it fires `channelActive` (swift-nio 2.101.3 `SocketChannelLifecycleManager.moveState`).
/// `IdleStateHandler` then schedules its timer twice, in `handlerAdded` and in `channelActive`, and cancels only the
/// second (`ChannelHandlers.swift`): the first held the handler and the socket's pipeline until it fired, 300 s per
/// stream, which the load script saw as memory that did not come back.
final class ClosingWhenIdle: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny

    private let timeout: TimeAmount
    private var lastActivity = NIODeadline.uptimeNanoseconds(0)
    private var timer: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    // The loop's clock, not the wall's: an EmbeddedEventLoop's is the one its tests advance.
    func handlerAdded(context: ChannelHandlerContext) {
        lastActivity = context.eventLoop.now
        schedule(context, at: lastActivity + timeout)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        cancel()
    }

    func channelInactive(context: ChannelHandlerContext) {
        cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastActivity = context.eventLoop.now
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        lastActivity = context.eventLoop.now
        context.write(data, promise: promise)
    }

    private func schedule(_ context: ChannelHandlerContext, at deadline: NIODeadline) {
        timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            timer = nil
            let due = lastActivity + timeout
            if context.eventLoop.now >= due { context.close(promise: nil) } else { schedule(context, at: due) }
        }
    }

    private func cancel() {
        timer?.cancel()
        timer = nil
    }
}

/// A stream over the gateway's stream budget: answered RST_STREAM REFUSED_STREAM as soon as its headers arrive.
final class RefusedStreamHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload
    private var refused = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refused else { return }
        refused = true
        context.writeAndFlush(wrapOutboundOut(.rstStream(.refusedStream)), promise: nil)
    }
}
