import AsyncHTTPClient
import NIOCore
import NIOSSL

/// The timeouts every HTTP client of caid is built with.
///
/// async-http-client's per-request deadline ends when the response head arrives; a body that stalls after that (a
/// NAT entry dropped, no FIN and no RST) would wait forever. Its read timeout covers the body too: a connection
/// silent for that long while an answer is awaited fails the request, which the caller retries.
enum HTTPTimeouts {
    static func configuration(read: Duration) -> HTTPClient.Configuration.Timeout {
        HTTPClient.Configuration.Timeout(connect: .seconds(10), read: TimeAmount(read))
    }

    /// A client with these timeouts and otherwise the defaults.
    static func client(read: Duration = .seconds(30), tls: TLSConfiguration? = nil) -> HTTPClient {
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.timeout = self.configuration(read: read)
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }
}
