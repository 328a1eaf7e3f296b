@testable import Gateway
import NIOCore
import NIOEmbedded
import Testing

/// The upstream socket's idle timeout, on an embedded loop whose clock the test advances.
@Suite struct ClosingWhenIdleTests {
    /// An active embedded socket with the handler added the way the gateway adds it: after the connect, and then
    /// `channelActive` arriving (NIO fulfils the connect promise before it fires the event).
    static func socket(timeout: TimeAmount, loop: EmbeddedEventLoop = EmbeddedEventLoop()) throws -> (EmbeddedChannel, ClosingWhenIdle) {
        let channel = EmbeddedChannel(loop: loop)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        let handler = ClosingWhenIdle(timeout: timeout)
        try channel.pipeline.syncOperations.addHandler(handler)
        channel.pipeline.fireChannelActive()
        return (channel, handler)
    }

    @Test func anIdleSocketIsClosedAfterTheTimeoutAndNotBefore() throws {
        let (channel, _) = try Self.socket(timeout: .seconds(300))
        channel.embeddedEventLoop.advanceTime(by: .seconds(299))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(!channel.isActive)
    }

    @Test func bytesEitherWayPostponeTheTimeout() throws {
        let (channel, _) = try Self.socket(timeout: .seconds(300))
        channel.embeddedEventLoop.advanceTime(by: .seconds(200))
        try channel.writeInbound(ByteBuffer(string: "from the service"))
        channel.embeddedEventLoop.advanceTime(by: .seconds(200))
        #expect(channel.isActive)
        try channel.writeOutbound(ByteBuffer(string: "to the service"))
        channel.embeddedEventLoop.advanceTime(by: .seconds(299))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(!channel.isActive)
    }

    /// The leak the load script found: once the socket closes, nothing scheduled keeps the handler (NIO's
    /// `IdleStateHandler`, added this way, stayed referenced by its first timer for the whole timeout).
    @Test func aClosedSocketLeavesNoTimerHoldingTheHandler() throws {
        // The loop outlives the socket, as a gateway's does: a forgotten timer stays in its queue.
        let loop = EmbeddedEventLoop()
        weak var watched: ClosingWhenIdle?
        try {
            let (channel, handler) = try Self.socket(timeout: .seconds(300), loop: loop)
            watched = handler
            try channel.close().wait()
            loop.run()
        }()
        #expect(watched == nil)
        loop.advanceTime(by: .seconds(301))
    }
}
