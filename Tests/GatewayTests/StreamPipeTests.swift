@testable import Gateway
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import Testing

/// The flow-control freeze of issue #14 reproduced and gone, without sockets: an HTTP/2 client and server on embedded channels, a
/// server stream piped to an embedded "socket" whose writability the test turns off and on.
@Suite struct StreamPipeTests {
    /// Client and server HTTP/2 connections on one embedded loop, bytes moved between them by hand.
    final class Pair {
        let loop = EmbeddedEventLoop()
        let client: EmbeddedChannel
        let server: EmbeddedChannel
        let socket: EmbeddedChannel
        var clientStream: (any Channel)?
        let multiplexer: NIOHTTP2Handler.StreamMultiplexer

        /// - Parameter serverStream: sets up the server's side of the stream, given the stream and the socket.
        init(serverStream: @escaping @Sendable (any Channel, EmbeddedChannel) throws -> Void) throws {
            client = EmbeddedChannel(loop: loop)
            server = EmbeddedChannel(loop: loop)
            let socket = EmbeddedChannel(loop: loop)
            self.socket = socket
            let bound = NIOLoopBound(socket, eventLoop: loop)
            _ = try server.pipeline.syncOperations.configureHTTP2Pipeline(mode: .server, connectionConfiguration: .init(), streamConfiguration: .init()) { stream in
                stream.eventLoop.makeCompletedFuture { try serverStream(stream, bound.value) }
            }
            multiplexer = try client.pipeline.syncOperations.configureHTTP2Pipeline(mode: .client, connectionConfiguration: .init(), streamConfiguration: .init()) { $0.eventLoop.makeSucceededVoidFuture() }
            let address = try SocketAddress(ipAddress: "127.0.0.1", port: 1)
            for channel in [client, server, socket] { try channel.connect(to: address).wait() }
            try exchange()
            let created = multiplexer.createStreamChannel { $0.eventLoop.makeSucceededVoidFuture() }
            loop.run()
            let stream = try created.wait()
            clientStream = stream
            stream.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: HPACKHeaders([(":method", "CONNECT"), (":authority", "tng.internal")]))), promise: nil)
            try exchange()
        }

        /// Moves bytes both ways until neither side has more to say.
        func exchange() throws {
            var moved = true
            while moved {
                moved = false
                while let bytes = try client.readOutbound(as: ByteBuffer.self) { try server.writeInbound(bytes); moved = true }
                while let bytes = try server.readOutbound(as: ByteBuffer.self) { try client.writeInbound(bytes); moved = true }
                loop.run()
            }
        }

        func send(_ text: String) throws {
            clientStream?.writeAndFlush(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer(string: text)))), promise: nil)
            try exchange()
        }

        /// What the server's stream passed on to the socket so far.
        func socketReceived() throws -> String {
            var text = ""
            while let buffer = try socket.readOutbound(as: ByteBuffer.self) { text += String(buffer: buffer) }
            return text
        }

        func setSocketWritable(_ writable: Bool) {
            socket.isWritable = writable
            socket.pipeline.fireChannelWritabilityChanged()
            loop.run()
        }
    }

    /// What the old pipe did: turn the stream's autoRead off while the socket cannot take more, and on again. An
    /// HTTP2StreamChannel does not read when autoRead comes back on, so nothing more arrives, ever.
    @Test func autoReadBackOnDoesNotResumeAStream() throws {
        let pair = try Pair { stream, socket in
            try stream.pipeline.syncOperations.addHandler(OldPipe(socket: socket))
        }
        try pair.send("one")
        #expect(try pair.socketReceived() == "one")
        pair.setSocketWritable(false)
        try pair.send("two")
        pair.setSocketWritable(true)
        try pair.send("three")
        // The freeze: once a read is not outstanding ("two" may still use the one that was), "three" sits in the
        // stream, undelivered, and its window is never returned.
        #expect(try !pair.socketReceived().contains("three"))
    }

    /// The StreamPipe holds the stream's read instead, and lets it go when the socket is writable again.
    @Test func heldReadResumesTheStream() throws {
        let pair = try Pair { stream, socket in
            let socketSide = SocketSide()
            let streamSide = StreamSide()
            try socket.pipeline.syncOperations.addHandler(socketSide)
            try stream.pipeline.syncOperations.addHandler(streamSide)
            StreamPipe.join(socket: socketSide, stream: streamSide)
        }
        try pair.send("one")
        #expect(try pair.socketReceived() == "one")
        pair.setSocketWritable(false)
        try pair.send("two")
        try pair.send("three")
        pair.setSocketWritable(true)
        try pair.exchange()
        #expect(try pair.socketReceived() == "twothree")
        try pair.send("four")
        #expect(try pair.socketReceived() == "four")
    }
}

/// The pipe before issue #14, reduced to the part that froze.
private final class OldPipe: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    private let socket: EmbeddedChannel
    private var stream: (any Channel)?

    init(socket: EmbeddedChannel) {
        self.socket = socket
    }

    func handlerAdded(context: ChannelHandlerContext) {
        stream = context.channel
        let stream = context.channel
        try? socket.pipeline.syncOperations.addHandler(WritabilityToAutoRead(stream: stream), position: .first)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .data(let frame) = unwrapInboundIn(data), case .byteBuffer(let buffer) = frame.data {
            socket.writeAndFlush(buffer, promise: nil)
        }
    }
}

private final class WritabilityToAutoRead: ChannelInboundHandler {
    typealias InboundIn = NIOAny
    private let stream: any Channel

    init(stream: any Channel) {
        self.stream = stream
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        stream.setOption(ChannelOptions.autoRead, value: context.channel.isWritable).whenComplete { _ in }
        context.fireChannelWritabilityChanged()
    }
}
