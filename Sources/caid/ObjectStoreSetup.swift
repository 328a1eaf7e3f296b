import AsyncHTTPClient
import CaidConfiguration
import Foundation
import Logging
import ObjectStore
import OSSProtocol

/// Builds the OSS client and fetcher `caid fetch` and the `fetch` service share, from the configuration.
enum ObjectStoreSetup {
    /// What is wrong with the OSS settings, in the configuration's words.
    struct Invalid: Error, CustomStringConvertible {
        var description: String
    }

    /// The OSS address `MODEL_OSS_ENDPOINT`, the bucket and `CAID_OSS_REGION` make.
    static func endpoint(for config: CaidConfig) throws(Invalid) -> Endpoint {
        let storage = config.objectStorage
        switch Endpoint.resolve(endpoint: storage.endpoint, bucket: storage.bucket, region: config.ossRegion) {
        case .success(let value): return value
        case .failure(let error): throw Invalid(description: "\(error)")
        }
    }

    /// An HTTP client for OSS (through `CAID_OSS_PROXY` or the proxy environment when set) and a fetcher using it.
    static func fetcher(for config: CaidConfig, options: Fetcher.Options = .init(), logger: Logger) throws(Invalid) -> (Fetcher, HTTPClient) {
        let endpoint: Endpoint
        do {
            endpoint = try Self.endpoint(for: config)
        } catch {
            throw Invalid(description: "\(config.file): MODEL_OSS_ENDPOINT: \(error.description)")
        }
        return fetcher(for: config, endpoint: endpoint, options: options, logger: logger)
    }

    static func fetcher(for config: CaidConfig, endpoint: Endpoint, options: Fetcher.Options = .init(), logger: Logger) -> (Fetcher, HTTPClient) {
        let storage = config.objectStorage
        var httpConfiguration = HTTPClient.Configuration()
        httpConfiguration.timeout = HTTPTimeouts.configuration(read: config.readTimeout)
        if let proxy = ProxySettings.resolve(for: endpoint.bucketURL, override: config.ossProxy, environment: ProcessInfo.processInfo.environment) {
            httpConfiguration.proxy = .server(host: proxy.host, port: proxy.port)
            logger.info("fetching through the proxy \(proxy.host):\(proxy.port)")
        }
        let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: httpConfiguration)
        let client = OSSClient(
            endpoint: endpoint, bucket: storage.bucket,
            credentials: OSSCredentials(accessKeyID: storage.accessKeyID, secret: storage.secretAccessKey, securityToken: storage.sessionToken),
            signature: OSSClient.Signature(rawValue: config.ossSignature) ?? .v4, http: http)
        let fetcher = Fetcher(client: client, prefix: storage.prefix, cacheDirectory: config.modelCacheDirectory, options: options, logger: logger)
        return (fetcher, http)
    }
}
