import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// Why a peer did not give a range: unreachable, not attested (the handshake failed), or an HTTP refusal.
public struct PeerError: Error, Sendable, CustomStringConvertible {
    public var peer: String
    public var status: Int?
    public var message: String
    public var description: String { "sharing peer \(peer): \(message)" }
}

/// Fetches ranges of verified objects from a sharing peer over mutually attested TLS (one connection per request;
/// the peer's verdict is cached per certificate, so only the first handshake costs an attestation).
public struct PeerObjectClient: Sendable {
    private let peers: AttestedPeers
    public let port: Int

    public init(peers: AttestedPeers, port: Int) {
        self.peers = peers
        self.port = port
    }

    /// The bytes `range` of `key` (version `etag`) from the peer at `host`.
    public func fetch(host: String, key: String, etag: String, range: ClosedRange<UInt64>, timeout: TimeAmount = .seconds(30)) async throws(PeerError) -> [UInt8] {
        let peer = "\(host):\(port)"
        let expected = Int(range.upperBound - range.lowerBound + 1)
        let peers = peers
        do {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(5))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            NIOSSLClientHandler(context: peers.clientContext, serverHostname: nil, customVerificationCallback: peers.verification(peer: peer)))
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    }
                }
                .connect(host: host, port: port).get()
            let response = channel.eventLoop.makePromise(of: (HTTPResponseStatus, [UInt8]).self)
            do {
                try await channel.eventLoop.submit {
                    try channel.pipeline.syncOperations.addHandler(ResponseCollector(promise: response, limit: expected + 4096))
                }.get()
            } catch {
                // The peer closed first (a refused handshake does): the promise must still be completed, or NIO traps
                // on a leaked promise in a debug build.
                response.fail(error)
                channel.close(promise: nil)
                throw error
            }
            let encoded = key.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "?#"))) ?? key
            var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/v1/objects/" + encoded)
            head.headers.add(name: "Host", value: host)
            head.headers.add(name: "Range", value: "bytes=\(range.lowerBound)-\(range.upperBound)")
            head.headers.add(name: "If-Match", value: etag)
            head.headers.add(name: "Connection", value: "close")
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            let scheduled = channel.eventLoop.scheduleTask(in: timeout) { response.fail(ChannelError.connectTimeout(timeout)) }
            defer {
                scheduled.cancel()
                channel.close(promise: nil)
            }
            let (status, body) = try await response.futureResult.get()
            guard status == .partialContent else {
                throw PeerError(peer: peer, status: Int(status.code), message: "answered \(status.code): \(String(decoding: body.prefix(200), as: UTF8.self))")
            }
            guard body.count == expected else { throw PeerError(peer: peer, status: 206, message: "sent \(body.count) bytes for a range of \(expected)") }
            return body
        } catch let error as PeerError {
            throw error
        } catch let error as NIOSSLError {
            throw PeerError(peer: peer, status: nil, message: "TLS failed; the peer did not prove a trusted TEE or refused ours (\(error))")
        } catch {
            throw PeerError(peer: peer, status: nil, message: "\(error)")
        }
    }
}

/// Collects one response, refusing bodies over `limit`.
private final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let promise: EventLoopPromise<(HTTPResponseStatus, [UInt8])>
    private let limit: Int
    private var status: HTTPResponseStatus?
    private var body: [UInt8] = []

    init(promise: EventLoopPromise<(HTTPResponseStatus, [UInt8])>, limit: Int) {
        self.promise = promise
        self.limit = limit
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): status = head.status
        case .body(let buffer):
            guard body.count + buffer.readableBytes <= limit else {
                promise.fail(ChannelError.inputClosed)
                context.close(promise: nil)
                return
            }
            body += buffer.readableBytesView
        case .end:
            promise.succeed((status ?? .internalServerError, body))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(ChannelError.inputClosed)
    }
}
