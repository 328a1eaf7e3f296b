@testable import Gateway
import NIOCore
import NIOEmbedded
import NIOTLS
import RATLS
import Testing

/// How `caid tunnel` sets up a connection to a gateway once TLS is done (``TunnelClient/addAttestedSetup``), in an
/// `EmbeddedChannel`: the TLS handshake's event and the verdict are given by hand.
@Suite struct TunnelClientSetupTests {
    final class Calls: @unchecked Sendable {
        var certificates = 0
        var configured = 0
    }

    /// A channel with the setup added; the verdict is the test's to give.
    struct Rig {
        let channel = EmbeddedChannel()
        let verdict: EventLoopPromise<String>
        let calls = Calls()
        let result: EventLoopFuture<String>

        init() throws {
            let verdict = channel.eventLoop.makePromise(of: String.self)
            let calls = calls
            self.verdict = verdict
            result = try TunnelClient.addAttestedSetup(
                to: channel,
                certificate: { _ in calls.certificates += 1; return [1, 2, 3] },
                verify: { _, der in
                    #expect(der == [1, 2, 3])
                    return verdict.futureResult
                },
                configure: { _, verdict in
                    calls.configured += 1
                    return "connection of \(verdict)"
                })
        }

        func handshake(_ negotiated: String?) {
            channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: negotiated))
        }

        func failure() -> String? {
            do { _ = try result.wait(); return nil } catch { return "\(error)" }
        }
    }

    @Test func nothingPassesUntilTheGatewayIsVerifiedThenHTTP2GetsWhatCame() throws {
        let rig = try Rig()
        rig.handshake("h2")
        #expect(rig.calls.certificates == 1)
        // The gateway's SETTINGS arrive while its evidence is checked.
        try rig.channel.writeInbound(ByteBuffer(string: "SETTINGS"))
        #expect(try rig.channel.readInbound(as: ByteBuffer.self) == nil, "kept until the gateway is verified")
        #expect(rig.calls.configured == 0, "HTTP/2 is not set up before the verdict")
        rig.verdict.succeed("tdx")
        #expect(try rig.result.wait() == "connection of tdx")
        #expect(rig.calls.configured == 1)
        #expect(try rig.channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "SETTINGS"), "then handed on to HTTP/2")
        #expect(try rig.channel.readOutbound(as: ByteBuffer.self) == nil, "nothing was written")
        _ = try? rig.channel.finish()
    }

    @Test func aGatewayThatDoesNotSpeakH2IsRefusedBeforeItsCertificateIsRead() throws {
        for offered in [nil, "http/1.1"] as [String?] {
            let rig = try Rig()
            rig.handshake(offered)
            #expect(rig.failure()?.contains("did not agree to ALPN h2 (got \(offered ?? "none"))") == true)
            #expect(rig.calls.certificates == 0)
            rig.verdict.fail(ChannelError.ioOnClosedChannel)
            _ = try? rig.channel.finish()
        }
    }

    @Test func aVerdictThatFailsSetsNothingUpAndIsTheAnswerEvenIfTheGatewayClosedMeanwhile() throws {
        let rig = try Rig()
        rig.handshake("h2")
        // A plain TLS server closes while its certificate is checked: what the check says is the answer.
        rig.channel.pipeline.fireChannelInactive()
        rig.verdict.fail(VerificationError("the certificate carries no TEE evidence"))
        #expect(rig.failure() == "the certificate carries no TEE evidence")
        #expect(rig.calls.configured == 0)
    }

    @Test func aConnectionThatClosesDuringTheHandshakeIsNotAGateway() throws {
        let rig = try Rig()
        rig.channel.pipeline.fireChannelInactive()
        #expect(rig.failure()?.contains("closed the connection during the TLS handshake") == true)
        #expect(rig.calls.certificates == 0)
        rig.verdict.fail(ChannelError.ioOnClosedChannel)
    }
}
