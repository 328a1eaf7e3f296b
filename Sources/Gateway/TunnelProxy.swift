import Foundation
import Logging
import NIOCore
import NIOPosix

/// The HTTP proxy of `caid tunnel` (TNG's `http_proxy` ingress): `CONNECT host:port` tunnels the raw bytes after
/// `200`; an absolute-form request (`GET http://host:port/path`) is re-sent in origin form with
/// `X-Tng-Http-Forward: true` over a tunnel stream of its own. Everything goes through an attested tunnel; what does
/// not verify is refused with a reason the proxy user can read.
public final class TunnelProxy: Sendable {
    private let client: TunnelClient
    private let logger: Logger
    private let listener = Listener()

    public init(client: TunnelClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    /// Listens on `host:port`. - Returns: the port.
    public func start(host: String, port: Int) async throws -> Int {
        let client = client
        let logger = logger
        return try await listener.bind(host: host, port: port) { bootstrap in
            bootstrap
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ProxyRequestHandler(client: client, logger: logger))
                    }
                }
        }
    }

    public func stop() async {
        await listener.close()
    }
}

/// One proxy connection: reads the request head, opens the tunnel stream, then gets out of the way.
final class ProxyRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let client: TunnelClient
    private let logger: Logger
    private var buffer = ByteBuffer()
    private var dispatched = false

    init(client: TunnelClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        buffer.writeBuffer(&incoming)
        guard !dispatched else { return }
        let view = buffer.readableBytesView
        guard let end = view.firstRange(of: Array("\r\n\r\n".utf8))?.upperBound else {
            if buffer.readableBytes > 64 << 10 { fail(context, 431, "the request head is larger than 64 KiB") }
            return
        }
        dispatched = true
        let headLength = end - view.startIndex
        let head = String(decoding: view.prefix(headLength), as: UTF8.self)
        buffer.moveReaderIndex(forwardBy: headLength)
        let rest = buffer
        buffer = ByteBuffer()
        switch ProxyRequest.parse(head: head) {
        case .failure(let problem):
            fail(context, problem.status, problem.message)
        case .success(let request):
            let socket = context.channel
            socket.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
            var preamble: ByteBuffer?
            var payload = rest
            if request.isConnect {
                preamble = socket.allocator.buffer(string: "HTTP/1.1 200 Connection Established\r\n\r\n")
            } else {
                var forwarded = socket.allocator.buffer(string: request.forwardedHead)
                forwarded.writeBuffer(&payload)
                payload = forwarded
            }
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let destination = "\(request.host):\(request.port)"
            client.openStream(host: request.host, port: request.port, socket: socket, preamble: preamble, request: payload).whenComplete { result in
                let (handler, context) = loopBound.value
                switch result {
                case .success(let stream):
                    handler.logger.debug("tunnel open to \(destination)")
                    do {
                        try context.pipeline.syncOperations.addHandler(SocketToStreamHandler(stream: stream))
                        context.pipeline.syncOperations.removeHandler(handler, promise: nil)
                    } catch {
                        stream.close(promise: nil)
                        context.close(promise: nil)
                        return
                    }
                    context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
                case .failure(let error):
                    let refused = error is VerificationError
                    handler.logger.warning("refused a tunnel to \(destination): \(error)")
                    handler.fail(context, refused ? 403 : 502, refused
                        ? "\(destination) did not prove a trusted TEE: \(error)"
                        : "cannot open an attested tunnel to \(destination): \(error)")
                }
            }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed, !dispatched { context.close(promise: nil) }
        context.fireUserInboundEventTriggered(event)
    }

    private func fail(_ context: ChannelHandlerContext, _ status: Int, _ message: String) {
        let reason = [400: "Bad Request", 403: "Forbidden", 431: "Request Header Fields Too Large", 502: "Bad Gateway", 508: "Loop Detected"][status] ?? "Error"
        let body = "caid tunnel: \(message)\n"
        let response = "HTTP/1.1 \(status) \(reason)\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(string: response))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }
}

/// A proxy request head, parsed: where to, and what to send into the tunnel.
public struct ProxyRequest: Sendable {
    public var isConnect: Bool
    public var host: String
    public var port: Int
    /// For absolute-form requests: the head re-written in origin form for the far side.
    public var forwardedHead: String

    /// Why a request cannot be proxied: the status and words for the proxy user.
    public struct Problem: Error, Sendable {
        public var status: Int
        public var message: String
    }

    public static func parse(head: String) -> Result<ProxyRequest, Problem> {
        var lines = head.components(separatedBy: "\r\n")
        while lines.last == "" { lines.removeLast() }
        let parts = (lines.first ?? "").split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else {
            return .failure(Problem(status: 400, message: "not an HTTP/1.x proxy request"))
        }
        let headers = lines.dropFirst()
        if headers.contains(where: { $0.lowercased().hasPrefix("x-tng-http-forward:") }) {
            return .failure(Problem(status: 508, message: "the request already went through a tunnel (X-Tng-Http-Forward); refusing a loop"))
        }
        if parts[0] == "CONNECT" {
            guard let (host, port) = splitAuthority(parts[1], defaultPort: nil) else {
                return .failure(Problem(status: 400, message: "CONNECT needs host:port, got '\(parts[1])'"))
            }
            return .success(ProxyRequest(isConnect: true, host: host, port: port, forwardedHead: ""))
        }
        guard parts[1].lowercased().hasPrefix("http://") else {
            return .failure(Problem(status: 400, message: "only CONNECT and absolute http:// requests can be proxied, got '\(parts[1])'"))
        }
        let afterScheme = parts[1].dropFirst(7)
        let slash = afterScheme.firstIndex(of: "/") ?? afterScheme.endIndex
        let path = afterScheme[slash...].isEmpty ? "/" : String(afterScheme[slash...])
        guard let (host, port) = splitAuthority(String(afterScheme[..<slash]), defaultPort: 80) else {
            return .failure(Problem(status: 400, message: "no host in '\(parts[1])'"))
        }
        // Origin form, one request per stream: the far side closes after answering.
        var forwarded = ["\(parts[0]) \(path) \(parts[2])"]
        for line in headers {
            let name = line.split(separator: ":", maxSplits: 1).first.map { $0.lowercased() } ?? ""
            if ["connection", "proxy-connection", "proxy-authorization", "keep-alive"].contains(name) { continue }
            forwarded.append(line)
        }
        forwarded += ["Connection: close", "X-Tng-Http-Forward: true"]
        return .success(ProxyRequest(isConnect: false, host: host, port: port, forwardedHead: forwarded.joined(separator: "\r\n") + "\r\n\r\n"))
    }

    init(isConnect: Bool, host: String, port: Int, forwardedHead: String) {
        self.isConnect = isConnect
        self.host = host
        self.port = port
        self.forwardedHead = forwardedHead
    }

    /// `host[:port]`; without a port, `defaultPort`, or nil when there is none (CONNECT names its port).
    private static func splitAuthority(_ authority: String, defaultPort: Int?) -> (String, Int)? {
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            let host = String(authority[authority.index(after: authority.startIndex)..<close])
            let rest = authority[authority.index(after: close)...]
            if rest.isEmpty { return defaultPort.map { (host, $0) } }
            guard rest.hasPrefix(":"), let port = Int(rest.dropFirst()), (1...65535).contains(port) else { return nil }
            return (host, port)
        }
        let pieces = authority.split(separator: ":", omittingEmptySubsequences: false)
        guard let host = pieces.first, !host.isEmpty, pieces.count <= 2 else { return nil }
        if pieces.count == 1 { return defaultPort.map { (String(host), $0) } }
        guard let port = Int(pieces[1]), (1...65535).contains(port) else { return nil }
        return (String(host), port)
    }
}
