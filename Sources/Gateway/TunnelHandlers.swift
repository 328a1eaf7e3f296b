import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix

/// One HTTP/2 stream of the gateway: a `CONNECT` (TNG's ingress sends `:method CONNECT`, `:authority
/// tng.internal`, nothing else) is answered `200` once the upstream TCP connection is open, and from then on the
/// stream's DATA and the upstream bytes are piped both ways with back-pressure; END_STREAM and TCP half-close map
/// onto each other. Anything but CONNECT gets `400`.
///
/// The stream, its upstream connection and both handlers live on one event loop; once the service answers, the
/// stream is handed to a ``StreamPipe`` and this handler leaves.
/// The gateway's stream handler for code outside the module that must drive it exactly (the CONNECT-headers fuzz
/// target in CaidFuzzTargets), without making the handler itself public.
package enum TunnelStreamHandlers {
    package static func make(upstream: @escaping @Sendable (any EventLoop) -> EventLoopFuture<any Channel>) -> any ChannelHandler {
        TunnelStreamHandler(upstream: upstream)
    }
}

final class TunnelStreamHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    private enum State {
        case idle
        /// Waiting for the upstream connection; DATA that arrives meanwhile is kept.
        case connecting(pending: [ByteBuffer], ended: Bool)
        /// Handed over to the ``StreamPipe``.
        case open
        case closed
    }

    private var state = State.idle
    private let upstream: @Sendable (any EventLoop) -> EventLoopFuture<any Channel>

    /// - Parameter upstream: opens the upstream connection (mapping: the service; netfilter: the original
    ///   destination) on the given loop, not reading until the pipe is joined.
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
            guard case .connecting(var pending, _) = state else { return }
            if case .byteBuffer(let buffer) = frame.data, buffer.readableBytes > 0 { pending.append(buffer) }
            state = .connecting(pending: pending, ended: frame.endStream)
        case .rstStream:
            state = .closed
        default:
            break
        }
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
            let socketSide = SocketSide()
            let streamSide = StreamSide()
            do {
                try channel.pipeline.syncOperations.addHandler(socketSide)
                try context.pipeline.syncOperations.addHandler(streamSide)
            } catch {
                channel.close(promise: nil)
                refuse(context: context, status: "502", message: "the service behind the gateway is not reachable\n")
                return
            }
            state = .open
            let headers = HPACKHeaders([(":status", "200"), ("server", "tng")])
            context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
            for buffer in pending { channel.write(buffer, promise: nil) }
            channel.flush()
            StreamPipe.join(socket: socketSide, stream: streamSide)
            if ended { socketSide.end() }
            // A stream reset while the service was being dialled: drop the service connection at once.
            if !context.channel.isActive { channel.close(promise: nil) }
            context.pipeline.syncOperations.removeHandler(self, promise: nil)
            // Both sides were held still until the pipe was complete; now let bytes flow.
            channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
            context.channel.read()
        }
    }

    private func refuse(context: ChannelHandlerContext, status: String, message: String) {
        state = .closed
        let headers = HPACKHeaders([(":status", status), ("server", "tng"), ("content-type", "text/plain")])
        context.write(wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
        let body = context.channel.allocator.buffer(string: message)
        context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(body), endStream: true))), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Reset or closed while the service was dialled: ``connected(_:context:)`` drops that connection.
        state = .closed
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        state = .closed
        context.close(promise: nil)
    }
}

