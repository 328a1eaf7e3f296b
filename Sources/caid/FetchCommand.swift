import ArgumentParser
import AsyncHTTPClient
import CaidCore
import CaidSystemd
import Foundation
import Logging
import ObjectStore

struct FetchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fetch",
        abstract: "Download the model ciphertext from OSS into the cache, verified.",
        discussion: """
            Lists MODEL_OSS_BUCKET_PATH, downloads what the cache (CAID_CACHE_DIR/model) lacks in parallel ranges, \
            checks every object against OSS's size and CRC-64 before moving it into place, and removes cached objects \
            the bucket no longer has. Exit status: 0 everything verified, 1 failed, 78 configuration error.
            """
    )

    @OptionGroup var env: EnvOption

    @Option(help: ArgumentHelp("Part size in MiB.", valueName: "mib"))
    var partSize = 8

    @Option(help: ArgumentHelp("Parallel range requests.", valueName: "n"))
    var concurrency = 8

    func run() async throws {
        let config = try env.load()
        LogDestination.bootstrap(level: config.logLevel)
        let logger = Logger(label: "caid.fetch")
        let storage = config.objectStorage
        let endpoint: Endpoint
        switch Endpoint.resolve(endpoint: storage.endpoint, bucket: storage.bucket, region: config.ossRegion) {
        case .success(let value): endpoint = value
        case .failure(let error):
            printError("\(config.file): MODEL_OSS_ENDPOINT: \(error)")
            throw ExitCode(ConfigError.exitCode)
        }
        var httpConfiguration = HTTPClient.Configuration()
        if let proxy = ProxySettings.resolve(for: endpoint.bucketURL, override: config.ossProxy, environment: ProcessInfo.processInfo.environment) {
            httpConfiguration.proxy = .server(host: proxy.host, port: proxy.port)
            logger.info("fetching through the proxy \(proxy.host):\(proxy.port)")
        }
        let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: httpConfiguration)
        let client = OSSClient(
            endpoint: endpoint, bucket: storage.bucket,
            credentials: OSSCredentials(accessKeyID: storage.accessKeyID, secret: storage.secretAccessKey, securityToken: storage.sessionToken),
            signature: OSSClient.Signature(rawValue: config.ossSignature) ?? .v4, http: http)
        var options = Fetcher.Options()
        options.partSize = UInt64(max(1, partSize)) << 20
        options.concurrency = max(1, concurrency)
        let fetcher = Fetcher(client: client, prefix: storage.prefix, cacheDirectory: config.modelCacheDirectory, options: options, logger: logger)
        let meter = ProgressMeter(label: "fetching", total: 0)
        do {
            let summary: Fetcher.Summary
            do {
                summary = try await fetcher.run { done, total in meter.update(done: done, total: total) }
                try? await http.shutdown()
            } catch {
                try? await http.shutdown()
                throw error
            }
            meter.finish()
            printOut("fetched \(summary.downloaded) objects (\(ByteCount(summary.bytes))), \(summary.skipped) already verified, "
                + "\(summary.removed) stale removed; all \(summary.objects) verified in \(config.modelCacheDirectory)")
        } catch {
            meter.finish()
            printError("caid fetch: \(error)")
            throw ExitCode.failure
        }
    }
}
