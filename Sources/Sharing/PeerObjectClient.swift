import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOTLS

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
            let loop = MultiThreadedEventLoopGroup.singleton.next()
            let handshake = loop.makePromise(of: Void.self)
            // Both handlers are in the pipeline before it connects, so neither can miss the connection's end.
            let response = loop.makePromise(of: (HTTPResponseStatus, [UInt8]).self)
            let channel: any Channel
            do {
                channel = try await Self.connect(
                    on: loop, host: host, port: port, peers: peers, peer: peer, handshake: handshake, response: response, limit: expected + 4096)
            } catch {
                // Completed either way: NIO traps on a leaked promise in a debug build.
                handshake.fail(error)
                response.fail(error)
                throw error
            }
            // One bound for the handshake and the answer together: a peer that stalls either is cut.
            let scheduled = channel.eventLoop.scheduleTask(in: timeout) {
                handshake.fail(ChannelError.connectTimeout(timeout))
                response.fail(ChannelError.connectTimeout(timeout))
            }
            defer {
                scheduled.cancel()
                channel.close(promise: nil)
            }
            // The handshake's own outcome first: a peer that closes or resets while its certificate is checked, or
            // after refusing ours, failed the attested handshake; that is what the error says, not the socket's end.
            do {
                try await handshake.futureResult.get()
            } catch {
                response.fail(error)
                let cause = error is HandshakeOutcome.Closed ? "it closed the connection during the handshake" : "\(error)"
                throw PeerError(peer: peer, status: nil, message: "TLS failed; the peer did not prove a trusted TEE or refused ours (\(cause))")
            }
            let encoded = key.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "?#"))) ?? key
            var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/v1/objects/" + encoded)
            head.headers.add(name: "Host", value: host)
            head.headers.add(name: "Range", value: "bytes=\(range.lowerBound)-\(range.upperBound)")
            head.headers.add(name: "If-Match", value: etag)
            head.headers.add(name: "Connection", value: "close")
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
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

extension PeerObjectClient {
    /// A TLS connection to the peer, whose handshake's outcome completes `handshake` and whose one response (at
    /// most `limit` bytes of body) completes `response`.
    fileprivate static func connect(
        on loop: any EventLoop, host: String, port: Int, peers: AttestedPeers, peer: String, handshake: EventLoopPromise<Void>,
        response: EventLoopPromise<(HTTPResponseStatus, [UInt8])>, limit: Int
    ) async throws -> any Channel {
        try await ClientBootstrap(group: loop)
            .connectTimeout(.seconds(5))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        NIOSSLClientHandler(context: peers.clientContext, serverHostname: nil, customVerificationCallback: peers.verification(peer: peer)))
                    try channel.pipeline.syncOperations.addHandler(HandshakeOutcome(promise: handshake))
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ResponseCollector(promise: response, limit: limit))
                }
            }
            .connect(host: host, port: port).get()
    }
}

/// Completes `promise` when the TLS handshake completes, fails it with the handshake's error, or with ``Closed``
/// when the connection ends first.
private final class HandshakeOutcome: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    struct Closed: Error {}

    let promise: EventLoopPromise<Void>
    private var done = false

    init(promise: EventLoopPromise<Void>) {
        self.promise = promise
    }

    private func finish(_ result: Result<Void, any Error>) {
        guard !done else { return }
        done = true
        promise.completeWith(result)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event { finish(.success(())) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish(.failure(error))
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(.failure(Closed()))
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        finish(.failure(Closed()))
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
