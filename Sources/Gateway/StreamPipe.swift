import NIOCore
import NIOHTTP2

/// A byte pipe between a TCP socket and an HTTP/2 stream, both on one event loop: the two handlers below, joined by
/// ``StreamPipe/join(socket:stream:)``. Used by the gateway (stream ↔ service) and by `caid tunnel` (CONNECT
/// requests: stream ↔ proxy client).
///
/// Back-pressure: each side holds its channel's `read()` while the other side cannot take more, and lets it go when
/// the other side becomes writable again. This works the same on a socket and on an `HTTP2StreamChannel`; toggling
/// `autoRead` does not, because an `HTTP2StreamChannel` does not read again when `autoRead` is turned back on
/// (swift-nio-http2 1.46.0 `HTTP2StreamChannel.setOption0` only stores the flag). That was the download that froze:
/// the stream stopped delivering DATA, so it stopped returning window, so the gateway stopped reading the service.
///
/// Ends: the socket's EOF becomes END_STREAM and END_STREAM becomes the socket's half-close. A socket that closes
/// after the stream has ended towards it is a normal end (END_STREAM); only a socket that goes away while the stream
/// still carries data to it, or a stream reset, is a cancellation (RST_STREAM, and the socket is closed at once).
/// swift-nio 2 `BaseStreamSocketChannel.close0(mode: .input)` turns an EOF after our own half-close into a full close
/// without an `inputClosed` event; before, that was taken for an abort and every exchange ended with a reset.
enum StreamPipe {
    /// Joins the two sides and lets bytes flow. Both channels must be on the same event loop.
    static func join(socket: SocketSide, stream: StreamSide) {
        socket.stream = stream
        stream.socket = socket
        socket.gate(open: stream.isWritable)
        stream.gate(open: socket.isWritable)
    }
}

/// One side's `read()`: let through while the other side can take more, held until it can again.
struct ReadGate {
    private var open = false
    private var held = false

    /// A `read()` arrived. - Returns: whether it goes through now.
    mutating func request() -> Bool {
        if open { return true }
        held = true
        return false
    }

    /// The other side's writability changed. - Returns: whether a held `read()` must be issued now.
    mutating func set(open: Bool) -> Bool {
        self.open = open
        guard open, held else { return false }
        held = false
        return true
    }
}

/// The socket end of a ``StreamPipe``.
final class SocketSide: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    fileprivate var stream: StreamSide?
    private var context: ChannelHandlerContext?
    private var readGate = ReadGate()
    /// The socket's input is done (EOF, or it closed): END_STREAM or RST_STREAM has been decided.
    private var inputEnded = false
    /// The stream ended towards the socket and the socket's output was shut.
    private var outputEnded = false

    init() {}

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        stream?.send(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        stream?.flush()
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed, !inputEnded {
            inputEnded = true
            stream?.end()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        stream?.gate(open: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if readGate.request() { context.read() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !inputEnded {
            inputEnded = true
            // After the stream ended towards us, the socket closing is its EOF; before, it is an abort.
            if outputEnded { stream?.end() } else { stream?.cancel() }
        }
        stream = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    // MARK: called by the stream side

    func gate(open: Bool) {
        if readGate.set(open: open), let context { context.read() }
    }

    fileprivate func write(_ buffer: ByteBuffer) {
        context?.write(wrapOutboundOut(buffer), promise: nil)
    }

    fileprivate func flush() {
        context?.flush()
    }

    /// END_STREAM: everything is written, then the socket's output is shut.
    func end() {
        guard let context, !outputEnded else { return }
        outputEnded = true
        context.flush()
        context.close(mode: .output, promise: nil)
    }

    /// The stream was reset or went away: drop the socket now.
    fileprivate func cancel() {
        stream = nil
        context?.close(promise: nil)
    }
}

/// The HTTP/2 stream end of a ``StreamPipe``.
final class StreamSide: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    fileprivate var socket: SocketSide?
    private var context: ChannelHandlerContext?
    private var readGate = ReadGate()
    private var localEnded = false
    private var remoteEnded = false

    init() {}

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .data(let frame):
            if case .byteBuffer(let buffer) = frame.data, buffer.readableBytes > 0 { socket?.write(buffer) }
            if frame.endStream { remoteEnded = true; socket?.end() }
        case .headers(let headers) where headers.endStream:
            // Trailers end the stream too.
            remoteEnded = true
            socket?.end()
        case .rstStream:
            socket?.cancel()
            socket = nil
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        socket?.flush()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        socket?.gate(open: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if readGate.request() { context.read() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A stream that closed before both ends finished was reset: its socket goes at once, freeing it.
        if !(localEnded && remoteEnded) { socket?.cancel() }
        socket = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        socket?.cancel()
        socket = nil
        context.close(promise: nil)
    }

    // MARK: called by the socket side

    fileprivate func gate(open: Bool) {
        if readGate.set(open: open), let context { context.read() }
    }

    func send(_ buffer: ByteBuffer) {
        guard !localEnded else { return }
        context?.write(wrapOutboundOut(.data(.init(data: .byteBuffer(buffer)))), promise: nil)
    }

    func flush() {
        context?.flush()
    }

    /// The socket's EOF: END_STREAM.
    func end() {
        guard let context, !localEnded else { return }
        localEnded = true
        context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true))), promise: nil)
    }

    /// The socket went away mid-exchange: reset the stream (closing an open stream channel sends RST_STREAM CANCEL).
    fileprivate func cancel() {
        socket = nil
        context?.close(promise: nil)
    }
}
