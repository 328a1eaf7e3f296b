import Attestation
import AttestationService
import Crypto
import Foundation
import Gateway
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOHTTP2
import RATLS

/// Fixed inputs the Gateway targets check against, shared with ``FuzzSeeds`` so that the seeds pass the checks.
enum FuzzGateway {
    /// A fixed "now" inside the seeds' validity (2026-12-01), so a run does not depend on the clock.
    static let now = Date(timeIntervalSince1970: 1_796_083_200)
    static let key = (try? P256.Signing.PrivateKey(rawRepresentation: [UInt8](repeating: 0x3C, count: 32))) ?? P256.Signing.PrivateKey()
    static var subjectPublicKeyInfo: [UInt8] { Array(key.publicKey.derRepresentation) }
    static var claims: [UInt8] { RATLSEvidence.claims(subjectPublicKeyInfo: subjectPublicKeyInfo) }
    static let policyIDs = ["default"]
    static let filter = (try? DestinationFilter(parsing: ["*.example.com:443", "api.*", "[::1]:8080", "10.0.0.1:8000"])) ?? DestinationFilter()
}

extension FuzzTarget {
    /// The CBOR decoder the RA-TLS evidence goes through.
    static let cbor = FuzzTarget(name: "cbor", maxLength: 8192) { bytes in
        guard let item = try? CBOR(decoding: bytes) else { return }
        _ = item.encoded
        _ = item["tee_type"]
    }

    /// The evidence extension (2.23.133.5.4.9) of a peer's certificate, in both the background-check and the
    /// passport form, checked against a fixed key.
    static let ratlsEvidence = FuzzTarget(name: "ratls-evidence", maxLength: 16384) { bytes in
        let spki = FuzzGateway.subjectPublicKeyInfo
        _ = try? RATLSEvidence.verify(extensionValue: bytes, subjectPublicKeyInfo: spki)
        _ = try? RATLSEvidence.verifyToken(extensionValue: bytes, subjectPublicKeyInfo: spki)
    }

    /// A peer's whole certificate (DER), as `caid tunnel` and the sharing peers check it before asking the AS.
    static let ratlsCertificate = FuzzTarget(name: "ratls-cert", maxLength: 16384) { bytes in
        _ = try? PeerVerifier.checkCertificate(Array(bytes), now: FuzzGateway.now)
    }

    /// An Attestation Service token (simple RS384 or EAR ES256) as the tunnel verifies it.
    static let asToken = FuzzTarget(name: "as-token", maxLength: 8192) { bytes in
        let token = String(decoding: bytes, as: UTF8.self)
        let runtimeData = RATLSEvidence.runtimeData(claims: FuzzGateway.claims)
        _ = try? TokenVerifier.verify(token, runtimeData: runtimeData, policyIDs: FuzzGateway.policyIDs, now: FuzzGateway.now)
        _ = TokenVerifier.expiry(of: token)
    }

    /// What a local client sends `caid tunnel`'s HTTP proxy: NIO's request decoder set up as the proxy sets it up,
    /// then the route and the forwarded head for every request head it yields.
    static let proxyHead = FuzzTarget(name: "proxy-head", maxLength: 8192) { bytes in
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
        do {
            let sync = channel.pipeline.syncOperations
            try sync.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes)))
            try sync.addHandler(RouteProbe())
            try channel.writeInbound(channel.allocator.buffer(bytes: bytes))
        } catch {
            return
        }
    }

    /// What a TNG client sends the gateway after TLS: HTTP/2 frames (the connection preface is prepended), into
    /// NIO's HTTP/2 server configured like the gateway's and the gateway's own stream handler. The upstream
    /// fails at once, so every CONNECT is answered 502 and everything else 400.
    static let connectHeaders = FuzzTarget(name: "connect-headers", maxLength: 16384) { bytes in
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
        do {
            // The settings of GatewayServer.initialize, at the configuration's defaults.
            let defaults = GatewayConfiguration(mode: .mapping, listenPort: 1, servicePort: 2)
            var connection = NIOHTTP2Handler.ConnectionConfiguration()
            connection.initialSettings = [
                HTTP2Setting(parameter: .maxConcurrentStreams, value: defaults.maxStreamsPerConnection),
                HTTP2Setting(parameter: .initialWindowSize, value: defaults.streamWindow),
                HTTP2Setting(parameter: .maxHeaderListSize, value: 16 << 10),
            ]
            connection.targetWindowSize = 16 << 20
            var stream = NIOHTTP2Handler.StreamConfiguration()
            stream.targetWindowSize = defaults.streamWindow
            _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                mode: .server, connectionConfiguration: connection, streamConfiguration: stream
            ) { stream in
                stream.eventLoop.makeCompletedFuture {
                    try stream.pipeline.syncOperations.addHandler(
                        TunnelStreamHandlers.make { loop in loop.makeFailedFuture(ChannelError.connectTimeout(.seconds(1))) })
                }
            }
            // Active before the client's bytes arrive, as a real connection is (the server's SETTINGS go out). An
            // inactive EmbeddedChannel keeps NIO's HTTP/2 stream channels alive after finish(): a harness leak
            // (seen with no caid handler at all), not a product one.
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 4433)).wait()
            var input = channel.allocator.buffer(string: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            input.writeBytes(bytes)
            try channel.writeInbound(input)
            channel.embeddedEventLoop.run()
            while try channel.readOutbound(as: ByteBuffer.self) != nil {}
        } catch {
            return
        }
    }
}

/// Routes every request head the decoder yields, as ``ProxyConnectionHandler`` does before it opens a stream.
private final class RouteProbe: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data) else { return }
        _ = ProxyRoute.make(head, filter: FuzzGateway.filter)
        _ = ProxyRoute.forwardedHead(head)
    }
}
