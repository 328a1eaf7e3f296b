import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix

/// One HTTP/2 stream of the gateway: a `CONNECT` (TNG's ingress sends `:method CONNECT`, `:authority
/// tng.internal`, nothing else) is answered `200` once the upstream TCP connection is open, and from then on the
/// stream's DATA and the upstream bytes are piped both ways with back-pressure; END_STREAM and TCP half-close map
/// onto each other. Anything but CONNECT gets `400`.
///
/// The stream, its upstream connection and both handlers live on one event loop; they reach each other only there.
final class TunnelStreamHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private enum State {
        case idle
        /// Waiting for the upstream connection; DATA that arrives meanwhile is kept.
        case connecting(pending: [ByteBuffer], ended: Bool)
        case open(upstream: any Channel)
        case closed
    }

    private var state = State.idle
    private let upstream: @Sendable (any EventLoop) -> EventLoopFuture<any Channel>

    /// - Parameter upstream: opens the upstream connection (mapping: the service; netfilter: the original
    ///   destination) on the given loop, with a ``SocketToStreamHandler`` not yet attached.
    init(upstream: @escaping @Sendable (any EventLoop) -> EventLoopFuture<any Channel>) {
        self.upstream = upstream
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers(let headers):
            guard case .idle = state else { return }
            guard headers.headers.first(name: ":method") == "CONNECT" else {
                refuse(context: context, status: "400", message: "Protocol Error: the method should be CONNECT\n")
                return
            }
            state = .connecting(pending: [], ended: headers.endStream)
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            upstream(context.eventLoop).hop(to: context.eventLoop).whenComplete { result in
                let (handler, context) = loopBound.value
                handler.connected(result, context: context)
            }
        case .data(let frame):
            guard case .byteBuffer(let buffer) = frame.data else { return }
            switch state {
            case .connecting(var pending, _):
                pending.append(buffer)
                state = .connecting(pending: pending, ended: frame.endStream)
            case .open(let upstream):
                upstream.write(buffer, promise: nil)
                if frame.endStream { upstream.flush(); upstream.close(mode: .output, promise: nil) }
            case .idle, .closed:
                break
            }
        case .rstStream:
            closeUpstream()
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if case .open(let upstream) = state { upstream.flush() }
        context.fireChannelReadComplete()
    }

    private func connected(_ result: Result<any Channel, any Error>, context: ChannelHandlerContext) {
        guard case .connecting(let pending, let ended) = state else {
            if case .success(let channel) = result { channel.close(promise: nil) }
            return
        }
        switch result {
        case .failure:
            refuse(context: context, status: "502", message: "the service behind the gateway is not reachable\n")
        case .success(let channel):
            state = .open(upstream: channel)
            do {
                try channel.pipeline.syncOperations.addHandler(SocketToStreamHandler(stream: context.channel))
            } catch {
                channel.close(promise: nil)
                refuse(context: context, status: "502", message: "the service behind the gateway is not reachable\n")
                return
            }
            let headers = HPACKHeaders([(":status", "200"), ("server", "tng")])
            context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
            for buffer in pending { channel.write(buffer, promise: nil) }
            channel.flush()
            if ended { channel.close(mode: .output, promise: nil) }
            // Both sides were held still until the pipe was complete; now let bytes flow.
            channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
            context.read()
        }
    }

    private func refuse(context: ChannelHandlerContext, status: String, message: String) {
        state = .closed
        let headers = HPACKHeaders([(":status", status), ("server", "tng"), ("content-type", "text/plain")])
        context.write(wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
        let body = context.channel.allocator.buffer(string: message)
        context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(body), endStream: true))), promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // The client reads slowly: stop reading from the service until the stream can take more.
        if case .open(let upstream) = state {
            upstream.setOption(ChannelOptions.autoRead, value: context.channel.isWritable).whenComplete { _ in }
        }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        closeUpstream()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        closeUpstream()
        context.close(promise: nil)
    }

    private func closeUpstream() {
        if case .open(let upstream) = state { upstream.close(promise: nil) }
        state = .closed
    }
}

/// The TCP side of a tunnel stream (the service, or a proxy client): its bytes become DATA frames; its EOF becomes
/// END_STREAM; when it cannot take more, the stream stops reading.
final class SocketToStreamHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let stream: any Channel
    private var ended = false

    init(stream: any Channel) {
        self.stream = stream
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        stream.write(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(buffer))), promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        stream.flush()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed, !ended {
            ended = true
            stream.writeAndFlush(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true)), promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        stream.setOption(ChannelOptions.autoRead, value: context.channel.isWritable).whenComplete { _ in }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !ended {
            // The socket dropped without a clean end: reset the stream.
            ended = true
            stream.writeAndFlush(HTTP2Frame.FramePayload.rstStream(.cancel), promise: nil)
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
