import Attestation
import CaidTestSupport
import NIOCore
import NIOEmbedded
import NIOSSL
import NIOTLS
import RATLS
import Testing

@testable import Gateway

/// The gateway connection's deadlines: the pure state machine, and the handlers in the pipeline the gateway builds.
@Suite struct ConnectionGuardTests {
    static let deadlines = ConnectionDeadlines(firstBytes: .seconds(10), handshake: .seconds(60), idle: .seconds(600))

    @Test func silentConnectionIsClosedAfterTheFirstBytesTimeout() {
        var machine = Self.deadlines
        #expect(machine.initialDeadlines.map(\.0) == [.firstBytes, .handshake])
        #expect(machine.expired(.firstBytes) == .close(.noFirstBytes(.seconds(10))))
        #expect(machine.expired(.handshake) == .none)
    }

    @Test func handshakeGetsItsWholeTimeOnceBytesArrive() {
        var machine = Self.deadlines
        #expect(machine.bytesArrived() == .cancel(.firstBytes))
        #expect(machine.bytesArrived() == .none)
        // A late first-bytes timer changes nothing.
        #expect(machine.expired(.firstBytes) == .none)
        #expect(machine.expired(.handshake) == .close(.handshakeTooSlow(.seconds(60))))
    }

    @Test func idleIsIgnoredBeforeTheHandshakeAndClosesAfter() {
        var machine = Self.deadlines
        _ = machine.bytesArrived()
        #expect(machine.idleEvent() == .none)
        #expect(machine.handshakeCompleted() == .cancel(.handshake))
        #expect(machine.expired(.handshake) == .none)
        #expect(machine.idleEvent() == .close(.idle(.seconds(600))))
        #expect(machine.phase == .closed)
    }

    @Test func aShortHandshakeTimeoutAlsoBoundsTheFirstBytes() {
        var machine = ConnectionDeadlines(firstBytes: .seconds(30), handshake: .seconds(5), idle: .seconds(1))
        #expect(machine.expired(.handshake) == .close(.handshakeTooSlow(.seconds(5))))
    }

    /// The handlers ``GatewayServer`` installs, on an embedded channel with a real TLS handler.
    static func pipeline(firstBytes: Int64 = 10, handshake: Int64 = 60, idle: Int64 = 600) throws -> EmbeddedChannel {
        var configuration = GatewayConfiguration(mode: .mapping, listenPort: 0, servicePort: 1)
        configuration.firstBytesTimeout = .seconds(firstBytes)
        configuration.handshakeTimeout = .seconds(handshake)
        configuration.idleTimeout = .seconds(idle)
        let tls = try GatewayServer.tlsContext(try AttestedCertificate.make(attester: SampleAttester()))
        let channel = EmbeddedChannel()
        try GatewayServer.addTransportHandlers(channel.pipeline.syncOperations, tls: tls, configuration: configuration, logger: quietLogger)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    static func isOpen(_ channel: EmbeddedChannel) -> Bool { channel.isActive }

    @Test func embeddedSilentConnectionIsCut() throws {
        let channel = try Self.pipeline()
        channel.embeddedEventLoop.advanceTime(by: .seconds(9))
        #expect(Self.isOpen(channel))
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(!Self.isOpen(channel))
    }

    @Test func embeddedSlowHandshakeSurvivesUntilTheHandshakeTimeout() throws {
        let channel = try Self.pipeline()
        // The start of a ClientHello: the first bytes, and the handshake now pending on the client (an AS call).
        try channel.writeInbound(ByteBuffer(bytes: [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03]))
        channel.embeddedEventLoop.advanceTime(by: .seconds(45))
        #expect(Self.isOpen(channel))
        channel.embeddedEventLoop.advanceTime(by: .seconds(16))
        #expect(!Self.isOpen(channel))
    }

    @Test func embeddedIdleEventFromTheIdleHandlerClosesAnEstablishedConnection() throws {
        let channel = try Self.pipeline()
        try channel.writeInbound(ByteBuffer(bytes: [0x16, 0x03, 0x01]))
        let sync = channel.pipeline.syncOperations
        // Fired where the real handlers fire them, so the test fails if the guard sits before either.
        let idle = try sync.context(handlerType: IdleStateHandler.self)
        idle.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.all)
        #expect(Self.isOpen(channel), "idle before the handshake completes is the handshake deadline's business")
        try sync.context(handlerType: NIOSSLServerHandler.self).fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: "h2"))
        channel.embeddedEventLoop.advanceTime(by: .seconds(120))
        #expect(Self.isOpen(channel), "the handshake deadline is cancelled once the handshake completes")
        idle.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.all)
        #expect(!Self.isOpen(channel))
    }
}
