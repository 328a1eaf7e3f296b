import NIOCore
import NIOPosix
import Synchronization

/// A TCP listener on the shared event loops that is closed once: how the gateway, the tunnel proxy and the sharing
/// server listen.
public final class Listener: Sendable {
    private let channel = Mutex<(any Channel)?>(nil)

    public init() {}

    /// Binds `host:port` (port 0 picks one); `configure` adds the child options and initializer.
    /// - Returns: the port it listens on.
    public func bind(host: String, port: Int, _ configure: (ServerBootstrap) -> ServerBootstrap) async throws -> Int {
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        let bound = try await configure(bootstrap).bind(host: host, port: port).get()
        channel.withLock { $0 = bound }
        return bound.localAddress?.port ?? port
    }

    /// Stops listening.
    public func close() async {
        guard let bound = channel.withLock({ $0.take() }) else { return }
        try? await bound.close()
    }
}
