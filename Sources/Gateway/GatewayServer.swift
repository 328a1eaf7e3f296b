import Attestation
import CaidBase
import CaidNIO
import Crypto
import Logging
import NIOCore
import NIOHTTP2
import NIOPosix
import NIOSSL
import NIOTLS
import RATLS
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// How the gateway listens and where it forwards.
public struct GatewayConfiguration: Sendable {
    public enum Mode: String, Sendable {
        /// Clients dial `<host>:MODEL_SERVICE_PORT`; nat rules redirect that traffic to the gateway, which forwards
        /// to the connection's original destination.
        case netfilter
        /// The gateway listens on a port of its own and forwards to the service on loopback.
        case mapping
    }

    public var mode: Mode
    public var listenHost = "0.0.0.0"
    /// The port caid listens on (`CAID_GATEWAY_PORT`).
    public var listenPort: UInt16
    /// The inference service's port (`MODEL_SERVICE_PORT`).
    public var servicePort: UInt16
    /// Where the service is in `mapping` mode.
    public var serviceHost = "127.0.0.1"
    public var maxConnections = 256
    /// Open connections from one source address at most (`CAID_GATEWAY_MAX_CONNECTIONS_PER_SOURCE`): one host's idle
    /// or half-open connections cannot take every slot from the others.
    public var maxConnectionsPerSource = 64
    /// Tunnel streams open at once across all connections (`CAID_GATEWAY_STREAM_BUDGET`); each holds one upstream
    /// socket. ``streamBudget(descriptorLimit:)`` lowers it to what the descriptor limit leaves.
    public var streamBudget = 4096
    /// How long one stream may carry no bytes either way before it is reset (`CAID_GATEWAY_STREAM_IDLE_TIMEOUT`):
    /// the connection's idle timeout does not reach a silent stream on a connection whose other streams are busy.
    /// Envoy's `stream_idle_timeout` defaults to the same 5 minutes.
    public var streamIdleTimeout: Duration = .seconds(300)
    /// Bytes one connection may make the gateway buffer from its client (`CAID_GATEWAY_CONNECTION_BUFFER`, in MiB):
    /// swift-nio-http2 returns connection window as DATA arrives, so a stream whose service does not read holds up
    /// to its stream window, and a connection holds streams × window. The stream window is sized from this.
    public var connectionBuffer = 64 << 20
    /// TNG's egress serves with hyper's HTTP/2 defaults, 200 concurrent streams (hyper v1.6.0
    /// `src/proto/h2/server.rs`, `max_concurrent_streams: Some(200)`, the version TNG v2.2.6's Cargo.lock pins).
    public var maxStreamsPerConnection = 200
    /// How long a new connection may stay silent. A TNG client sends its ClientHello at once; TNG's own egress
    /// allows 5 s (`TRANSPORT_LAYER_READ_FIRST_BYTE_TIMEOUT`, tng/src/tunnel/egress/protocol/common/transport/mod.rs
    /// @ v2.2.6).
    public var firstBytesTimeout: Duration = .seconds(10)
    /// How long the whole TLS handshake may take, counted from the connection's start. TNG ≤ 2.2.4 clients ask
    /// their Attestation Service inside it, before they send their Finished (rustls `verify_server_cert` blocks on
    /// rats-cert `verify_der`: tng/src/tunnel/cert_verifier.rs @ v2.2.4), with no timeout of their own on that call
    /// (rats-cert converter/restful.rs builds its reqwest client without one), so a slow AS lengthens the handshake.
    public var handshakeTimeout: Duration = .seconds(60)
    /// How long an established connection may carry no bytes either way.
    public var idleTimeout: Duration = .seconds(600)
    /// RST_STREAM frames a client may send in `resetWindow` before the connection is closed
    /// (`CAID_GATEWAY_MAX_RESETS`). A reset is a cancelled request (a user stops a generation, a client times out), so
    /// a busy TNG client sends some; a rapid-reset flood (CVE-2023-44487) sends thousands a second, each costing a
    /// connection to the service. swift-nio-http2's default, 200 in 30 s, cut off a TNG client at 7 cancellations a
    /// second.
    public var maxResets = 2_000
    public var resetWindow: Duration = .seconds(10)
    /// A new certificate with fresh evidence this often (TNG's default).
    public var certificateLifetime: Duration = .seconds(600)
    /// How often `netfilter` mode's nat rules are checked and put back when gone (`CAID_GATEWAY_RULE_CHECK`).
    public var ruleCheckInterval: Duration = .seconds(10)
    /// What the certificate carries for TNG clients (`CAID_GATEWAY_ATTESTATION_MODEL`).
    public var attestationModel: AttestationModel = .backgroundCheck

    public init(mode: Mode, listenPort: UInt16, servicePort: UInt16) {
        self.mode = mode
        self.listenPort = listenPort
        self.servicePort = servicePort
    }

    /// The receive window of one stream: ``connectionBuffer`` shared by the streams of a connection, within 64 KiB
    /// (HTTP/2's default) and 4 MiB (beyond that a single tunnel is not faster here).
    public var streamWindow: Int {
        let share = connectionBuffer / max(1, maxStreamsPerConnection)
        return min(4 << 20, max(64 << 10, share / (16 << 10) * (16 << 10)))
    }

    /// Descriptors kept for everything but tunnel streams: the health socket, KBS and OSS clients, downloads, the
    /// FUSE device, sharing, journald.
    public static let descriptorReserve = 1024

    /// ``streamBudget``, lowered so that the gateway's connections and streams leave ``descriptorReserve``
    /// descriptors of `descriptorLimit` (`RLIMIT_NOFILE`) for the rest of caid.
    public func streamBudget(descriptorLimit: Int) -> Int {
        let left = descriptorLimit - Self.descriptorReserve - maxConnections
        return max(0, min(streamBudget, left))
    }
}

/// The two RA-TLS models of TNG ≥ 2.2.5 (`attest.model`, tng/src/config/ra.rs @ v2.2.6; absent means
/// background check).
public enum AttestationModel: String, Sendable, CaseIterable {
    /// The certificate carries the TEE evidence; each client takes it to its Attestation Service (TNG's only model
    /// before 2.2.5, and clients configured `verify.model = background_check`).
    case backgroundCheck = "background-check"
    /// The gateway takes its evidence to the Attestation Service itself and carries the token it gets; clients
    /// configured `verify.model = passport` check the token without calling the AS.
    case passport
}

/// The server side of TNG's tunnel: TLS 1.3 with ALPN `h2` and an attested certificate, no client certificate,
/// HTTP/2 `CONNECT` streams piped to the inference service.
public final class GatewayServer: Sendable {
    private let configuration: GatewayConfiguration
    private let context: Mutex<NIOSSLContext>
    /// Connections, connections per source and streams open now, and what was refused.
    public let budget: GatewayBudget
    private let logger: Logger
    private let listener = Listener()
    /// Open HTTP/2 connections, for ``sendGoAway()``.
    private let http2Connections = Mutex<[ObjectIdentifier: any Channel]>([:])

    /// - Parameters:
    ///   - certificate: the first attested certificate; replace it with ``renew(_:)``.
    ///   - descriptorLimit: this process's `RLIMIT_NOFILE`, which bounds the stream budget.
    public init(configuration: GatewayConfiguration, certificate: AttestedCertificate, descriptorLimit: Int = DescriptorLimit.current, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        let streams = configuration.streamBudget(descriptorLimit: descriptorLimit)
        if streams < configuration.streamBudget {
            logger.warning("the gateway's stream budget is \(streams), not \(configuration.streamBudget) (CAID_GATEWAY_STREAM_BUDGET): the descriptor limit is \(descriptorLimit), and \(configuration.maxConnections) connections plus \(GatewayConfiguration.descriptorReserve) descriptors for the rest of caid come first; raise LimitNOFILE")
        }
        self.budget = GatewayBudget(
            maxConnections: configuration.maxConnections, maxPerSource: configuration.maxConnectionsPerSource, maxStreams: streams)
        self.context = Mutex(try Self.tlsContext(certificate))
    }

    /// TLS 1.3 only, ALPN `h2` only, no client certificate.
    static func tlsContext(_ certificate: AttestedCertificate) throws -> NIOSSLContext {
        var keyBytes = Array(certificate.key.derRepresentation)
        defer { wipeBytes(&keyBytes) }
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: [.certificate(try NIOSSLCertificate(bytes: certificate.der, format: .der))],
            privateKey: .privateKey(try NIOSSLPrivateKey(bytes: keyBytes, format: .der)))
        tls.minimumTLSVersion = .tlsv13
        tls.maximumTLSVersion = .tlsv13
        tls.applicationProtocols = ["h2"]
        tls.certificateVerification = .none
        return try NIOSSLContext(configuration: tls)
    }

    /// Serves new connections with `certificate` from now on; open connections keep theirs.
    public func renew(_ certificate: AttestedCertificate) throws {
        let fresh = try Self.tlsContext(certificate)
        context.withLock { $0 = fresh }
    }

    /// Binds the listener. - Returns: the port it listens on.
    public func start() async throws -> Int {
        try await listener.bind(host: configuration.listenHost, port: Int(configuration.listenPort)) { bootstrap in
            bootstrap
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer { [self] channel in
                    channel.eventLoop.makeCompletedFuture { try self.initialize(channel) }
                }
        }
    }

    /// Tells every open client connection to go away gracefully (GOAWAY, NO_ERROR, last stream 2^31-1): its open
    /// streams finish, and the client opens new streams on a new, newly verified connection.
    public func sendGoAway() {
        let open = http2Connections.withLock { Array($0.values) }
        for channel in open {
            channel.writeAndFlush(HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: .maxID, errorCode: .noError, opaqueData: nil)), promise: nil)
        }
    }

    /// Stops listening and closes every connection.
    public func stop() async {
        await listener.close()
    }

    private func initialize(_ channel: any Channel) throws {
        let source = channel.remoteAddress?.ipAddress ?? "unknown"
        if let refusal = budget.admitConnection(from: source) {
            // Debug only: a flood would otherwise flood the journal; the counters say how many.
            switch refusal {
            case .connections:
                logger.debug("refusing a connection from \(source): \(configuration.maxConnections) gateway connections are open (CAID_GATEWAY_MAX_CONNECTIONS)")
            case .source, .streams:
                logger.debug("refusing a connection from \(source): \(configuration.maxConnectionsPerSource) connections from it are open (CAID_GATEWAY_MAX_CONNECTIONS_PER_SOURCE)")
            }
            channel.close(promise: nil)
            return
        }
        channel.closeFuture.whenComplete { [budget] _ in budget.releaseConnection(from: source) }
        let sync = channel.pipeline.syncOperations
        try Self.addTransportHandlers(sync, tls: context.withLock { $0 }, configuration: configuration, logger: logger)
        let upstream = upstreamConnector(for: channel)
        let streams = configuration.maxStreamsPerConnection
        let window = configuration.streamWindow
        let streamIdle = TimeAmount(configuration.streamIdleTimeout)
        let budget = budget
        let (maxResets, resetWindow) = (configuration.maxResets, TimeAmount(configuration.resetWindow))
        let logger = logger
        try sync.addHandler(ApplicationProtocolNegotiationHandler { [channel, self] result in
            guard case .negotiated("h2") = result else {
                logger.info("closing a gateway connection that did not negotiate ALPN h2")
                return channel.close()
            }
            return channel.eventLoop.makeCompletedFuture {
                var connection = NIOHTTP2Handler.ConnectionConfiguration()
                connection.initialSettings = [
                    HTTP2Setting(parameter: .maxConcurrentStreams, value: streams),
                    // Wide windows: 64 KiB ones limit a tunnel's throughput badly (TNG measured it).
                    HTTP2Setting(parameter: .initialWindowSize, value: window),
                    HTTP2Setting(parameter: .maxHeaderListSize, value: 16 << 10),
                ]
                // The connection window is returned as bytes arrive, so it bounds no memory; the stream windows do
                // (``GatewayConfiguration/connectionBuffer``).
                connection.targetWindowSize = 16 << 20
                var stream = NIOHTTP2Handler.StreamConfiguration()
                stream.targetWindowSize = window
                stream.streamResetFrameRateLimit.maximumCount = maxResets
                stream.streamResetFrameRateLimit.windowLength = resetWindow
                stream.outboundBufferSizeHighWatermark = TunnelWindows.streamHighWatermark
                stream.outboundBufferSizeLowWatermark = TunnelWindows.streamLowWatermark
                _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                    mode: .server, connectionConfiguration: connection, streamConfiguration: stream
                ) { stream in
                    stream.eventLoop.makeCompletedFuture {
                        guard budget.admitStream() == nil else {
                            // RFC 9113 §8.7: REFUSED_STREAM tells the client nothing was processed, so it may retry.
                            try stream.pipeline.syncOperations.addHandler(RefusedStreamHandler())
                            return
                        }
                        stream.closeFuture.whenComplete { _ in budget.releaseStream() }
                        try stream.pipeline.syncOperations.addHandler(TunnelStreamHandler(upstream: upstream, idleTimeout: streamIdle))
                    }
                }
                try channel.pipeline.syncOperations.addHandler(ClosingOnConnectionError(peer: "a tunnel client", logger: logger))
                let id = ObjectIdentifier(channel)
                self.http2Connections.withLock { $0[id] = channel }
                channel.closeFuture.whenComplete { _ in _ = self.http2Connections.withLock { $0.removeValue(forKey: id) } }
            }
        })
    }

    /// TLS and the connection's deadlines. The order matters: ``FirstBytesDetector`` sees the raw bytes before TLS;
    /// ``ConnectionGuard`` comes after both the TLS handler and `IdleStateHandler`, because user events travel
    /// towards the tail and it must see the handshake's completion and the idle event.
    static func addTransportHandlers(
        _ sync: ChannelPipeline.SynchronousOperations, tls: NIOSSLContext, configuration: GatewayConfiguration, logger: Logger
    ) throws {
        try sync.addHandler(FirstBytesDetector())
        try sync.addHandler(NIOSSLServerHandler(context: tls))
        try sync.addHandler(IdleStateHandler(allTimeout: TimeAmount(configuration.idleTimeout)))
        try sync.addHandler(ConnectionGuard(
            deadlines: ConnectionDeadlines(
                firstBytes: configuration.firstBytesTimeout, handshake: configuration.handshakeTimeout, idle: configuration.idleTimeout),
            logger: logger))
    }

    /// Opens upstream connections for the streams of `connection`: to the service (mapping) or to the address the
    /// client originally dialled (netfilter), marked so that caid's own nat rules leave them alone.
    private func upstreamConnector(for connection: any Channel) -> @Sendable (any EventLoop) -> EventLoopFuture<any Channel> {
        let configuration = configuration
        return { loop in
            switch configuration.mode {
            case .mapping:
                return Self.bootstrap(loop, marked: false).connect(host: configuration.serviceHost, port: Int(configuration.servicePort))
            case .netfilter:
                guard let provider = connection as? any SocketOptionProvider else {
                    return loop.makeFailedFuture(ChannelError.operationUnsupported)
                }
                let servicePort = configuration.servicePort
                return provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_IP), name: SocketOptionName(80 /* SO_ORIGINAL_DST */))
                    .flatMap { (original: sockaddr_in) -> EventLoopFuture<any Channel> in
                        var address = original.sin_addr
                        var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
                        inet_ntop(AF_INET, &address, &text, socklen_t(text.count))
                        let host = String(decoding: text.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
                        do {
                            return Self.bootstrap(loop, marked: true).connect(to: try SocketAddress(ipAddress: host, port: Int(servicePort)))
                        } catch {
                            return loop.makeFailedFuture(error)
                        }
                    }
            }
        }
    }

    /// Upstream connections: half-close allowed, not read until the stream handler is attached, and in netfilter
    /// mode marked so that caid's own nat rules leave them alone.
    private static func bootstrap(_ loop: any EventLoop, marked: Bool) -> ClientBootstrap {
        var bootstrap = ClientBootstrap(group: loop)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.autoRead, value: false)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
        if marked {
            bootstrap = bootstrap.channelOption(
                ChannelOptions.Types.SocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_MARK)),
                value: SocketOptionValue(NatRules.mark))
        }
        return bootstrap
    }
}

/// When a gateway connection must be closed, as a pure state machine: no bytes within the first-bytes timeout, no
/// completed TLS handshake within the handshake timeout (both counted from the start), or an idle event once
/// established. The two deadlines are separate so that a silent stranger is cut quickly while a TNG client that
/// asks its Attestation Service inside the handshake still has time.
struct ConnectionDeadlines: Sendable, Equatable {
    enum Deadline: Sendable, Equatable { case firstBytes, handshake }

    /// Why a connection was closed, in words for the log.
    enum Reason: Sendable, Equatable, CustomStringConvertible {
        case noFirstBytes(Duration)
        case handshakeTooSlow(Duration)
        case idle(Duration)

        var description: String {
            switch self {
            case .noFirstBytes(let limit):
                "it sent nothing in \(limit.components.seconds) s (CAID_GATEWAY_FIRST_BYTES_TIMEOUT); not a TNG client"
            case .handshakeTooSlow(let limit):
                "its TLS handshake did not finish in \(limit.components.seconds) s (CAID_GATEWAY_HANDSHAKE_TIMEOUT); TNG <= 2.2.4 "
                    + "clients ask their Attestation Service inside the handshake, so a slow AS can cause this: check its latency"
            case .idle(let limit):
                "it carried no bytes for \(limit.components.seconds) s (CAID_GATEWAY_IDLE_TIMEOUT)"
            }
        }
    }

    enum Action: Sendable, Equatable {
        case none
        case cancel(Deadline)
        case close(Reason)
    }

    enum Phase: Sendable, Equatable { case awaitingFirstBytes, handshaking, established, closed }

    let firstBytes: Duration
    let handshake: Duration
    let idle: Duration
    private(set) var phase: Phase = .awaitingFirstBytes

    init(firstBytes: Duration, handshake: Duration, idle: Duration) {
        self.firstBytes = firstBytes
        self.handshake = handshake
        self.idle = idle
    }

    /// The deadlines to arm when the connection starts, both counted from then.
    var initialDeadlines: [(Deadline, Duration)] { [(.firstBytes, firstBytes), (.handshake, handshake)] }

    mutating func bytesArrived() -> Action {
        guard phase == .awaitingFirstBytes else { return .none }
        phase = .handshaking
        return .cancel(.firstBytes)
    }

    mutating func handshakeCompleted() -> Action {
        switch phase {
        case .awaitingFirstBytes, .handshaking:
            phase = .established
            return .cancel(.handshake)
        case .established, .closed:
            return .none
        }
    }

    mutating func expired(_ deadline: Deadline) -> Action {
        switch (deadline, phase) {
        case (.firstBytes, .awaitingFirstBytes):
            phase = .closed
            return .close(.noFirstBytes(firstBytes))
        case (.handshake, .awaitingFirstBytes), (.handshake, .handshaking):
            phase = .closed
            return .close(.handshakeTooSlow(handshake))
        default:
            return .none
        }
    }

    /// `IdleStateHandler`'s event. Before the handshake completes the handshake deadline governs.
    mutating func idleEvent() -> Action {
        guard phase == .established else { return .none }
        phase = .closed
        return .close(.idle(idle))
    }
}

/// Sent down the pipeline when the first bytes of a connection arrive, ahead of TLS.
struct FirstBytesEvent: Sendable {}

/// Sits before TLS, tells ``ConnectionGuard`` when the first bytes arrive, and leaves.
final class FirstBytesDetector: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    private var seen = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if !seen {
            seen = true
            context.fireUserInboundEventTriggered(FirstBytesEvent())
            context.fireChannelRead(data)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        context.fireChannelRead(data)
    }
}

/// Drives ``ConnectionDeadlines`` with timers and pipeline events, and closes the connection when it says so.
final class ConnectionGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private var deadlines: ConnectionDeadlines
    private var timers: [ConnectionDeadlines.Deadline: Scheduled<Void>] = [:]
    private let logger: Logger

    init(deadlines: ConnectionDeadlines, logger: Logger) {
        self.deadlines = deadlines
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let loop = context.eventLoop.assumeIsolated()
        for (deadline, delay) in deadlines.initialDeadlines {
            timers[deadline] = loop.scheduleTask(in: TimeAmount(delay)) { [self] in
                apply(deadlines.expired(deadline), context: context)
            }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        for timer in timers.values { timer.cancel() }
        timers = [:]
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is FirstBytesEvent {
            apply(deadlines.bytesArrived(), context: context)
            return
        }
        if let event = event as? IdleStateHandler.IdleStateEvent, event == .all {
            apply(deadlines.idleEvent(), context: context)
            return
        }
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            apply(deadlines.handshakeCompleted(), context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func apply(_ action: ConnectionDeadlines.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .cancel(let deadline):
            timers.removeValue(forKey: deadline)?.cancel()
        case .close(let reason):
            let peer = context.channel.remoteAddress.map { "\($0)" } ?? "a client"
            switch reason {
            case .noFirstBytes: logger.debug("closing the gateway connection from \(peer): \(reason)")
            case .handshakeTooSlow: logger.warning("closing the gateway connection from \(peer): \(reason)")
            case .idle: logger.info("closing the gateway connection from \(peer): \(reason)")
            }
            context.close(promise: nil)
        }
    }
}
