import ArgumentParser
import AsyncHTTPClient
import CaidConfiguration
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
        var options = Fetcher.Options()
        options.partSize = UInt64(max(1, partSize)) << 20
        options.concurrency = max(1, concurrency)
        let fetcher: Fetcher
        let http: HTTPClient
        do {
            (fetcher, http) = try ObjectStoreSetup.fetcher(for: config, options: options, logger: logger)
        } catch {
            printError(error.description)
            throw ExitCode(ConfigError.exitCode)
        }
        let meter = ProgressMeter(label: "fetching", total: 0)
        let summary: Fetcher.Summary
        do {
            summary = try await fetcher.run(progress: { done, total in meter.update(done: done, total: total) })
        } catch {
            try? await http.shutdown()
            meter.finish()
            printError("caid fetch: \(error)")
            throw ExitCode.failure
        }
        try? await http.shutdown()
        meter.finish()
        printOut("fetched \(summary.downloaded) objects (\(ByteCount(summary.bytes))), \(summary.skipped) already verified, "
            + "\(summary.removed) stale removed; all \(summary.objects) verified in \(config.modelCacheDirectory)")
        if !summary.refused.isEmpty {
            for line in summary.refused { printError("caid fetch: not fetched: \(line)") }
            printError("caid fetch: \(summary.refused.count) listed objects were not fetched; fix or remove them in the bucket")
            throw ExitCode.failure
        }
    }
}
