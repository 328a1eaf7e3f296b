import NIOCore
import NIOHTTP1

/// One downstream connection of `caid tunnel`'s proxy, request after request, as a state machine: the parts NIO's
/// `HTTPRequestDecoder` makes of the client's bytes, the tunnel stream's opening and response, and the client's EOF,
/// close or errors go in; what to do comes out. No I/O: ``ProxyConnectionHandler`` does what the actions say, and
/// the tests drive this without a channel.
///
/// `idle` (waiting for a head) → `opening` (the tunnel stream is being opened; what arrives meanwhile is kept,
/// reading is held) → `forwarding` (request parts go into the stream, response parts come back) → `idle` again once
/// the response has ended and the connection is kept alive. A CONNECT becomes a raw pipe (`connected`) once its
/// stream opens. A refusal is answered at once; the rest of that request is dropped, then the connection closes.
///
/// The head is NIO's decoder's, not parsed by hand: with `leftOverBytesStrategy: .forwardBytes` the decoder stops
/// after a CONNECT head and hands the bytes that came with it on when it is removed, which is what the pipe needs.
struct ProxyRequestState {
    /// A forwarded request and its response.
    struct Exchange: Equatable {
        /// The client's connection stays open after this response.
        var keepAlive: Bool
        /// The response goes back in the request's HTTP version.
        var version: HTTPVersion
        /// The whole request went into the stream; what the client sends now is the next request.
        var requestEnded: Bool
        /// A response head came back: a failure now can only cut the connection.
        var responseStarted: Bool
    }

    enum State: Equatable {
        case idle
        /// Waiting for the tunnel stream; request parts that arrive meanwhile are kept.
        case opening(route: ProxyRoute, head: HTTPRequestHead, queued: [HTTPServerRequestPart])
        case forwarding(Exchange)
        /// A refusal was answered; the rest of that request is dropped, then the connection closes.
        case refusing
        /// A CONNECT handed to a ``StreamPipe``.
        case connected
        case closed
    }

    /// What the handler does next.
    enum Action: Equatable {
        case none
        /// Hold the client's reads and open a tunnel stream to the route's destination.
        case openStream(ProxyRoute)
        /// Answer the client with an error (`Connection: close`); `close`: close the connection after it.
        case refuse(status: HTTPResponseStatus, message: String, close: Bool)
        /// The stream opened for a CONNECT: `200 Connection Established`, then a raw pipe to it, the bytes that came
        /// with the head first. `inputClosed`: the client already sent EOF, which ends the stream after those bytes.
        case joinConnect(inputClosed: Bool)
        /// The stream opened for a forwarded request: set up HTTP/1 over it, then report ``forwardSetUp()`` or
        /// ``forwardSetupFailed(reason:)``.
        case setUpForward
        /// Write these request parts into the stream; `flush` at the end of the request.
        case sendUpstream([HTTPClientRequestPart], flush: Bool)
        /// A stream opened that nobody waits for any more (the client went away): close it.
        case closeStream
        /// Write this response part to the client.
        case respond(HTTPServerResponsePart)
        /// The response ended and the connection is done: flush, then shut the output.
        case closeOutput
        /// Close the client connection; `cancelExchange`: reset the stream of the request being forwarded first.
        case close(cancelExchange: Bool)
        /// The client went away: reset the stream of the request being forwarded.
        case cancelExchange
        /// The response ended: feed these parts, which came pipelined behind the request, in again.
        case replay([HTTPServerRequestPart])
    }

    private(set) var state = State.idle
    /// Request parts that arrived pipelined while a response was still coming back.
    private(set) var pipelined: [HTTPServerRequestPart] = []
    /// The client sent EOF: after what is under way, the connection closes.
    private(set) var inputClosed = false
    private var upstreamWritable = true
    private var clientWritable = true
    private let filter: DestinationFilter

    init(filter: DestinationFilter) {
        self.filter = filter
    }

    /// Whether the client's socket may be read: not while a stream is opened, while the stream cannot take more, or
    /// while a pipelined request waits for the response before it.
    var mayReadClient: Bool {
        switch state {
        case .opening: false
        case .forwarding(let exchange): upstreamWritable && !(exchange.requestEnded && !pipelined.isEmpty)
        case .idle, .refusing, .connected, .closed: true
        }
    }

    /// Whether the stream's response may be read: not while the client's socket cannot take more.
    var mayReadUpstream: Bool { clientWritable }

    // MARK: the client

    mutating func requestPart(_ part: HTTPServerRequestPart) -> Action {
        switch state {
        case .idle:
            guard case .head(let head) = part else { return .none }
            switch ProxyRoute.make(head, filter: filter) {
            case .failure(let problem):
                state = .refusing
                return .refuse(status: problem.status, message: problem.message, close: false)
            case .success(let route):
                upstreamWritable = true
                state = .opening(route: route, head: head, queued: [])
                return .openStream(route)
            }
        case .opening(let route, let head, var queued):
            queued.append(part)
            state = .opening(route: route, head: head, queued: queued)
            return .none
        case .forwarding(var exchange):
            if exchange.requestEnded {
                // Pipelined: the next request waits for this response; reading is held meanwhile.
                pipelined.append(part)
                return .none
            }
            switch part {
            case .head:
                return .none
            case .body(let body):
                return .sendUpstream([.body(.byteBuffer(body))], flush: false)
            case .end(let trailers):
                exchange.requestEnded = true
                state = .forwarding(exchange)
                return .sendUpstream([.end(trailers)], flush: true)
            }
        case .refusing:
            guard case .end = part else { return .none }
            state = .closed
            return .close(cancelExchange: false)
        case .connected, .closed:
            return .none
        }
    }

    /// EOF from the client (half-close): a response under way still comes back, then the connection closes.
    mutating func clientInputClosed() -> Action {
        inputClosed = true
        switch state {
        case .idle, .refusing, .closed:
            state = .closed
            return .close(cancelExchange: false)
        case .opening, .forwarding, .connected:
            return .none
        }
    }

    /// The client's connection closed or was reset.
    mutating func clientClosed() -> Action {
        let forwarding = if case .forwarding = state { true } else { false }
        state = .closed
        return forwarding ? .cancelExchange : .none
    }

    /// An error on the client's connection; `parserError`: its bytes are not HTTP/1.x.
    mutating func errorCaught(parserError: Bool, description: String) -> Action {
        let previous = state
        state = .closed
        switch previous {
        case .idle where parserError:
            return .refuse(status: .badRequest, message: "not an HTTP/1.x proxy request: \(description)", close: true)
        case .forwarding:
            return .close(cancelExchange: true)
        default:
            return .close(cancelExchange: false)
        }
    }

    mutating func clientWritabilityChanged(_ writable: Bool) {
        clientWritable = writable
    }

    // MARK: the tunnel stream

    /// The tunnel stream opened (the gateway answered `200`).
    mutating func streamOpened() -> Action {
        guard case .opening(let route, _, _) = state else { return .closeStream }
        switch route.kind {
        case .connect:
            state = .connected
            return .joinConnect(inputClosed: inputClosed)
        case .forward:
            return .setUpForward
        }
    }

    /// The stream could not be opened; `verification`: the gateway did not prove a trusted TEE.
    mutating func streamFailed(verification: Bool, reason: String) -> Action {
        guard case .opening(let route, _, let queued) = state else { return .none }
        let destination = "\(route.host):\(route.port)"
        return refuseOpening(
            status: verification ? .forbidden : .badGateway,
            message: verification ? "\(destination) did not prove a trusted TEE: \(reason)" : "cannot open an attested tunnel to \(destination): \(reason)",
            queued: queued)
    }

    /// HTTP/1 is set up on the stream: the head goes in, in origin form, with what came after it.
    mutating func forwardSetUp() -> Action {
        guard case .opening(_, let head, let queued) = state else { return .none }
        var exchange = Exchange(keepAlive: head.isKeepAlive, version: head.version, requestEnded: false, responseStarted: false)
        var parts: [HTTPClientRequestPart] = [.head(ProxyRoute.forwardedHead(head))]
        for part in queued {
            if exchange.requestEnded {
                pipelined.append(part)
                continue
            }
            switch part {
            case .head: break
            case .body(let body): parts.append(.body(.byteBuffer(body)))
            case .end(let trailers):
                parts.append(.end(trailers))
                exchange.requestEnded = true
            }
        }
        state = .forwarding(exchange)
        return .sendUpstream(parts, flush: true)
    }

    mutating func forwardSetupFailed(reason: String) -> Action {
        guard case .opening(let route, _, let queued) = state else { return .none }
        return refuseOpening(status: .badGateway, message: "cannot set up the tunnel stream to \(route.host):\(route.port): \(reason)", queued: queued)
    }

    /// After a refusal the rest of the request is dropped; a request that already ended (or a client that already
    /// sent EOF) leaves nothing to wait for.
    private mutating func refuseOpening(status: HTTPResponseStatus, message: String, queued: [HTTPServerRequestPart]) -> Action {
        let ended = inputClosed || queued.contains { if case .end = $0 { true } else { false } }
        state = ended ? .closed : .refusing
        return .refuse(status: status, message: message, close: ended)
    }

    mutating func upstreamWritabilityChanged(_ writable: Bool) {
        upstreamWritable = writable
    }

    /// A part of the service's response.
    mutating func responsePart(_ part: HTTPClientResponsePart) -> Action {
        guard case .forwarding(var exchange) = state else { return .none }
        switch part {
        case .head(var head):
            exchange.responseStarted = true
            // Hop-by-hop: the service closes its side after each request; the client's connection is ours to keep.
            head.headers.remove(name: "connection")
            head.headers.remove(name: "keep-alive")
            // 1xx heads come first, each without an end (NIO's `.forward` strategy); the final head follows.
            if !(100..<200).contains(head.status.code) {
                head.version = exchange.version
                let delimited = head.headers.contains(name: "content-length") || head.status == .noContent || head.status == .notModified
                // An HTTP/1.0 client cannot take chunks: a response without a length ends with the connection.
                if exchange.version == .http1_0, !delimited { exchange.keepAlive = false }
                if !exchange.keepAlive {
                    head.headers.add(name: "Connection", value: "close")
                } else if exchange.version == .http1_0 {
                    head.headers.add(name: "Connection", value: "keep-alive")
                }
            }
            state = .forwarding(exchange)
            return .respond(.head(head))
        case .body(let body):
            return .respond(.body(.byteBuffer(body)))
        case .end(let trailers):
            return .respond(.end(trailers))
        }
    }

    /// The response has ended: the next request may come, or the connection closes.
    mutating func exchangeFinished() -> Action {
        guard case .forwarding(let exchange) = state else { return .none }
        guard exchange.keepAlive, exchange.requestEnded, !(inputClosed && pipelined.isEmpty) else {
            // The response came before the whole request, the client wants to close, or it sent EOF: done.
            state = .closed
            return inputClosed ? .close(cancelExchange: false) : .closeOutput
        }
        state = .idle
        let next = pipelined
        pipelined = []
        return next.isEmpty ? .none : .replay(next)
    }

    /// The stream failed before the response ended.
    mutating func exchangeFailed(reason: String) -> Action {
        guard case .forwarding(let exchange) = state else { return .none }
        state = .closed
        if exchange.responseStarted { return .close(cancelExchange: false) }
        return .refuse(status: .badGateway, message: "the tunnel stream ended without a response: \(reason)", close: inputClosed)
    }
}
