import Logging
import NIOCore
import NIOHTTP2

/// Flow-control sizes both ends of the tunnel use.
enum TunnelWindows {
    /// Per-stream receive window. 64 KiB (the HTTP/2 default) caps one stream at 64 KiB per round trip.
    static let stream = 4 << 20
    /// Connection receive window: returned as bytes arrive, so it bounds no memory; it must not be the bottleneck.
    static let connection = 16 << 20
    /// Bytes a stream channel buffers before it reports itself unwritable. swift-nio-http2's 8 KiB made it flap on
    /// every 16 KiB DATA frame, and each flap holds and releases the other side's reads.
    static let streamHighWatermark = 256 << 10
    static let streamLowWatermark = 128 << 10
}

/// Closes an HTTP/2 connection on the errors after which swift-nio-http2 has sent GOAWAY but leaves the TCP
/// connection open (`NIOHTTP2Handler.inboundConnectionErrorTriggered` writes GOAWAY and fires the error, nothing
/// more): a flood (resets, control frames, empty DATA, CONTINUATION, stream errors, glitches) or a broken peer. Left
/// open, such a connection is half-alive: the peer may keep it, and every stream it opens there hangs.
final class ClosingOnConnectionError: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame

    private let peer: String
    private let logger: Logger

    init(peer: String, logger: Logger) {
        self.peer = peer
        self.logger = logger
    }

    static func endsConnection(_ error: any Error) -> Bool {
        switch error {
        case is NIOHTTP2Errors.ExcessiveRSTFrames, is NIOHTTP2Errors.ExcessiveControlFrames,
            is NIOHTTP2Errors.ExcessiveEmptyDataFrames, is NIOHTTP2Errors.ExcessiveContinuationFrames,
            is NIOHTTP2Errors.ExcessiveStreamErrors, is NIOHTTP2Errors.ExcessiveNumberOfGlitches,
            is NIOHTTP2Errors.ExcessiveOutboundFrameBuffering, is NIOHTTP2Errors.ExcessivelyLargeHeaderBlock,
            is NIOHTTP2Errors.BadClientMagic, is NIOHTTP2Errors.UnableToParseFrame, is NIOHTTP2Errors.FlowControlViolation,
            is NIOHTTP2Errors.InvalidFlowControlWindowSize, is NIOHTTP2Errors.ReceivedBadSettings,
            is NIOHTTP2Errors.MissingPreface:
            return true
        default:
            return false
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if Self.endsConnection(error) {
            logger.warning("closing the HTTP/2 connection with \(peer) after GOAWAY: \(error)")
            context.close(promise: nil)
        }
        context.fireErrorCaught(error)
    }
}
