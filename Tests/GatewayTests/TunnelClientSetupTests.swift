@testable import Gateway
import NIOCore
import NIOEmbedded
import NIOTLS
import RATLS
import Testing

/// How `caid tunnel` sets up a connection to a gateway once TLS is done (``TunnelClient/attestedSetup``), in an
/// `EmbeddedChannel`: the TLS handshake's event and the verdict are given by hand.
@Suite struct TunnelClientSetupTests {
    final class Calls: @unchecked Sendable {
        var certificates = 0
        var configured = 0
    }

    @Test func nothingPassesUntilTheGatewayIsVerifiedThenHTTP2GetsWhatCame() throws {
        let channel = EmbeddedChannel()
        let verdict = channel.eventLoop.makePromise(of: String.self)
        let calls = Calls()
        let setup = TunnelClient.attestedSetup(
            certificate: { _ in calls.certificates += 1; return [1, 2, 3] },
            verify: { _, der in
                #expect(der == [1, 2, 3])
                return verdict.futureResult
            },
            configure: { _, verdict in
                calls.configured += 1
                return "connection of \(verdict)"
            })
        try channel.pipeline.syncOperations.addHandler(setup)
        channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: "h2"))
        #expect(calls.certificates == 1)
        // The gateway's SETTINGS arrive while its evidence is checked.
        try channel.writeInbound(ByteBuffer(string: "SETTINGS"))
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil, "kept until the gateway is verified")
        #expect(calls.configured == 0, "HTTP/2 is not set up before the verdict")
        verdict.succeed("tdx")
        #expect(try setup.protocolNegotiationResult.wait() == "connection of tdx")
        #expect(calls.configured == 1)
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "SETTINGS"), "then handed on to HTTP/2")
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil, "nothing was written")
        _ = try? channel.finish()
    }

    @Test func aGatewayThatDoesNotSpeakH2IsRefusedBeforeItsCertificateIsRead() throws {
        for offered in [nil, "http/1.1"] as [String?] {
            let channel = EmbeddedChannel()
            let calls = Calls()
            let setup = TunnelClient.attestedSetup(
                certificate: { _ in calls.certificates += 1; return [] },
                verify: { channel, _ in channel.eventLoop.makeSucceededFuture("never") },
                configure: { _, verdict in verdict })
            try channel.pipeline.syncOperations.addHandler(setup)
            channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: offered))
            #expect(throws: VerificationError.self) { try setup.protocolNegotiationResult.wait() }
            #expect(calls.certificates == 0)
            #expect((try? channel.throwIfErrorCaught()) == nil, "the failure also goes down the pipeline")
            _ = try? channel.finish()
        }
    }

    @Test func aVerdictThatFailsSetsNothingUp() throws {
        let channel = EmbeddedChannel()
        let verdict = channel.eventLoop.makePromise(of: String.self)
        let calls = Calls()
        let setup = TunnelClient.attestedSetup(
            certificate: { _ in [1] },
            verify: { _, _ in verdict.futureResult },
            configure: { _, verdict in
                calls.configured += 1
                return verdict
            })
        try channel.pipeline.syncOperations.addHandler(setup)
        channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: "h2"))
        verdict.fail(VerificationError("policy strict refused"))
        #expect(throws: VerificationError.self) { try setup.protocolNegotiationResult.wait() }
        #expect(calls.configured == 0)
        _ = try? channel.finish()
    }

    @Test func aConnectionThatClosesDuringTheHandshakeFailsTheSetup() throws {
        let channel = EmbeddedChannel()
        let setup = TunnelClient.attestedSetup(
            certificate: { _ in [1] },
            verify: { channel, _ in channel.eventLoop.makeSucceededFuture("never") },
            configure: { _, verdict in verdict })
        try channel.pipeline.syncOperations.addHandler(setup)
        channel.pipeline.fireChannelInactive()
        #expect(throws: ChannelError.outputClosed) { try setup.protocolNegotiationResult.wait() }
    }
}
