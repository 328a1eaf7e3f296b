import NIOCore

/// One gateway stream before it is piped, as a state machine: what arrives on the HTTP/2 stream and from the
/// upstream dial goes in, what to do comes out. No I/O: ``TunnelStreamHandler`` does what the actions say, and the
/// tests drive this without a channel.
///
/// A `CONNECT` (TNG's ingress sends `:method CONNECT`, `:authority tng.internal`, nothing else) dials the upstream;
/// DATA that arrives while it is dialled is kept, with END_STREAM; once the upstream answers, the stream is joined to
/// it. Anything but CONNECT is refused with 400, a failed dial with 502, and a stream that went away while the
/// upstream was dialled has its upstream closed at once.
struct TunnelStreamState {
    enum State: Equatable {
        case idle
        /// Waiting for the upstream connection; DATA that arrives meanwhile is kept.
        case connecting(pending: [ByteBuffer], ended: Bool)
        /// Handed over to the ``StreamPipe``.
        case open
        case closed
    }

    /// What the handler does next.
    enum Action: Equatable {
        case none
        /// Stop reading the stream until it is joined, and dial the upstream.
        case dial
        /// Answer with this status and message, ending the stream.
        case refuse(status: String, message: String)
        /// Answer 200, write `pending` upstream, join the two; `ended`: the client already half-closed.
        case join(pending: [ByteBuffer], ended: Bool)
        /// The stream is gone: close the upstream connection that just opened.
        case closeUpstream
        /// Close the stream.
        case closeStream
    }

    private(set) var state = State.idle

    static let notConnect = "Protocol Error: the method should be CONNECT\n"
    static let unreachable = "the service behind the gateway is not reachable\n"

    mutating func headersReceived(method: String?, endStream: Bool) -> Action {
        guard case .idle = state else { return .none }
        guard method == "CONNECT" else {
            state = .closed
            return .refuse(status: "400", message: Self.notConnect)
        }
        state = .connecting(pending: [], ended: endStream)
        return .dial
    }

    mutating func dataReceived(_ buffer: ByteBuffer?, endStream: Bool) -> Action {
        guard case .connecting(var pending, let ended) = state else { return .none }
        if let buffer, buffer.readableBytes > 0 { pending.append(buffer) }
        state = .connecting(pending: pending, ended: ended || endStream)
        return .none
    }

    /// RST_STREAM from the client, the stream's channel going inactive, or an error on it.
    mutating func streamEnded() {
        state = .closed
    }

    mutating func upstreamConnected() -> Action {
        guard case .connecting(let pending, let ended) = state else { return .closeUpstream }
        state = .open
        return .join(pending: pending, ended: ended)
    }

    mutating func upstreamFailed() -> Action {
        guard case .connecting = state else { return .none }
        state = .closed
        return .refuse(status: "502", message: Self.unreachable)
    }

    /// The pipe could not be set up around an upstream that did connect.
    mutating func joinFailed() -> Action {
        state = .closed
        return .refuse(status: "502", message: Self.unreachable)
    }

    mutating func errorCaught() -> Action {
        state = .closed
        return .closeStream
    }
}
