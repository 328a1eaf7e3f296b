@testable import Gateway
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import Testing

/// The gateway's stream state machine, without a channel: milliseconds.
@Suite struct TunnelStreamStateTests {
    let hello = ByteBuffer(string: "hello")

    @Test func aConnectDialsAndKeepsWhatArrivesMeanwhileWithItsEnd() {
        var state = TunnelStreamState()
        #expect(state.headersReceived(method: "CONNECT", endStream: false) == .dial)
        #expect(state.dataReceived(hello, endStream: false) == .none)
        #expect(state.dataReceived(ByteBuffer(), endStream: true) == .none)
        #expect(state.upstreamConnected() == .join(pending: [hello], ended: true))
        #expect(state.state == .open)
        #expect(state.headersReceived(method: "CONNECT", endStream: false) == .none, "a second HEADERS frame changes nothing")
    }

    @Test func anythingButConnectIsRefusedWith400() {
        var state = TunnelStreamState()
        #expect(state.headersReceived(method: "GET", endStream: true) == .refuse(status: "400", message: TunnelStreamState.notConnect))
        #expect(state.headersReceived(method: nil, endStream: true) == .none)
        #expect(state.dataReceived(hello, endStream: false) == .none)
    }

    @Test func aStreamThatEndsWhileTheUpstreamIsDialledClosesTheUpstream() {
        var state = TunnelStreamState()
        _ = state.headersReceived(method: "CONNECT", endStream: false)
        state.streamEnded()
        #expect(state.upstreamConnected() == .closeUpstream)
        #expect(state.upstreamFailed() == .none, "nothing is written to a stream that is gone")
    }

    @Test func aFailedDialIsRefusedWith502() {
        var state = TunnelStreamState()
        _ = state.headersReceived(method: "CONNECT", endStream: false)
        #expect(state.upstreamFailed() == .refuse(status: "502", message: TunnelStreamState.unreachable))
        #expect(state.upstreamConnected() == .closeUpstream)
    }

    @Test func anErrorClosesTheStream() {
        var state = TunnelStreamState()
        _ = state.headersReceived(method: "CONNECT", endStream: false)
        #expect(state.errorCaught() == .closeStream)
        #expect(state.state == .closed)
    }
}

/// The gateway's stream pipeline in `EmbeddedChannel`s: the stream, the upstream socket and the dial between them are
/// driven by hand on one `EmbeddedEventLoop`, so every interleaving is exact and nothing waits.
@Suite struct TunnelStreamPipelineTests {
    /// Records what goes towards the socket: `read()`s and closes (a close is recorded and not carried out, except
    /// a full close).
    final class Recorder: ChannelOutboundHandler {
        typealias OutboundIn = NIOAny
        var reads = 0
        var closes: [CloseMode] = []

        func read(context: ChannelHandlerContext) {
            reads += 1
            context.read()
        }

        func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
            closes.append(mode)
            if mode == .all { context.close(mode: mode, promise: promise) } else { promise?.succeed(()) }
        }
    }

    /// One stream with its handler, an upstream to be dialled, and the dial's promise.
    struct Rig {
        let loop = EmbeddedEventLoop()
        let stream: EmbeddedChannel
        let service: EmbeddedChannel
        let dial: EventLoopPromise<any Channel>
        let streamSide = Recorder()
        let serviceSide = Recorder()

        init() throws {
            stream = EmbeddedChannel(loop: loop)
            service = EmbeddedChannel(loop: loop)
            let dial = loop.makePromise(of: (any Channel).self)
            self.dial = dial
            try stream.pipeline.syncOperations.addHandler(streamSide)
            try stream.pipeline.syncOperations.addHandler(TunnelStreamHandler(upstream: { _ in dial.futureResult }, idleTimeout: .seconds(300)))
            try service.pipeline.syncOperations.addHandler(serviceSide)
            stream.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 1), promise: nil)
            service.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 2), promise: nil)
        }

        func connect(endStream: Bool = false) throws {
            let headers = HPACKHeaders([(":method", "CONNECT"), (":authority", "tng.internal")])
            try stream.writeInbound(HTTP2Frame.FramePayload.headers(.init(headers: headers, endStream: endStream)))
        }

        func data(_ text: String, endStream: Bool = false) throws {
            try stream.writeInbound(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer(string: text)), endStream: endStream)))
        }

        func answered() throws -> String? {
            guard case .headers(let headers) = try stream.readOutbound(as: HTTP2Frame.FramePayload.self) else { return nil }
            return headers.headers.first(name: ":status")
        }

        func upstreamBytes() throws -> String {
            var text = ""
            while let buffer = try service.readOutbound(as: ByteBuffer.self) { text += String(buffer: buffer) }
            return text
        }
    }

    @Test func bytesThatArriveWithTheRequestHeadReachTheServiceFirst() throws {
        let rig = try Rig()
        try rig.connect()
        try rig.data("GET / HTTP/1.1\r\n")
        try rig.data("\r\n")
        #expect(try rig.answered() == nil, "no answer before the service is there")
        rig.dial.succeed(rig.service)
        rig.loop.run()
        #expect(try rig.answered() == "200")
        #expect(try rig.upstreamBytes() == "GET / HTTP/1.1\r\n\r\n")
        // From here on the pipe carries the stream's DATA as it comes.
        try rig.data("more")
        #expect(try rig.upstreamBytes() == "more")
    }

    @Test func anRSTWhileTheUpstreamIsStillConnectingDropsTheUpstream() throws {
        let rig = try Rig()
        try rig.connect()
        try rig.stream.writeInbound(HTTP2Frame.FramePayload.rstStream(.cancel))
        rig.dial.succeed(rig.service)
        rig.loop.run()
        #expect(!rig.service.isActive, "the service connection is closed at once")
        #expect(try rig.answered() == nil, "nothing is written to the reset stream")
        #expect(try rig.upstreamBytes() == "")
    }

    @Test func aStreamClosedWhileTheUpstreamIsStillConnectingDropsTheUpstream() throws {
        let rig = try Rig()
        try rig.connect()
        try rig.data("early")
        _ = try? rig.stream.close().wait()
        rig.dial.succeed(rig.service)
        rig.loop.run()
        #expect(!rig.service.isActive)
        #expect(try rig.upstreamBytes() == "")
    }

    @Test func endStreamShutsTheServicesInputAndItsEOFEndsTheStream() throws {
        let rig = try Rig()
        try rig.connect()
        try rig.data("last", endStream: true)
        rig.dial.succeed(rig.service)
        rig.loop.run()
        #expect(try rig.answered() == "200")
        #expect(try rig.upstreamBytes() == "last")
        #expect(rig.serviceSide.closes == [.output], "END_STREAM is a half-close, not a close: the answer can still come")
        // The service answers, then ends its side: DATA, then END_STREAM.
        try rig.service.writeInbound(ByteBuffer(string: "answer"))
        rig.service.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        var answer = ""
        var ended = false
        while let frame = try rig.stream.readOutbound(as: HTTP2Frame.FramePayload.self) {
            guard case .data(let data) = frame else { continue }
            if case .byteBuffer(let buffer) = data.data { answer += String(buffer: buffer) }
            ended = ended || data.endStream
        }
        #expect(answer == "answer")
        #expect(ended)
    }

    @Test func aServiceThatCannotTakeMoreHoldsTheStreamsReads() throws {
        let rig = try Rig()
        try rig.connect()
        rig.dial.succeed(rig.service)
        rig.loop.run()
        #expect(try rig.answered() == "200")
        let before = rig.streamSide.reads
        rig.service.isWritable = false
        rig.service.pipeline.fireChannelWritabilityChanged()
        rig.stream.read()
        #expect(rig.streamSide.reads == before, "the stream is not read while the service's socket is full")
        rig.service.isWritable = true
        rig.service.pipeline.fireChannelWritabilityChanged()
        #expect(rig.streamSide.reads == before + 1, "the held read goes out once the socket drains")
    }

    @Test func aFailedDialAnswers502AndAMethodOtherThanConnect400() throws {
        let rig = try Rig()
        try rig.connect()
        rig.dial.fail(ChannelError.connectTimeout(.seconds(1)))
        rig.loop.run()
        #expect(try rig.answered() == "502")

        let other = try Rig()
        try other.stream.writeInbound(HTTP2Frame.FramePayload.headers(.init(headers: HPACKHeaders([(":method", "GET")]))))
        #expect(try other.answered() == "400")
        other.dial.fail(ChannelError.ioOnClosedChannel)
    }
}
