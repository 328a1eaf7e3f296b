import ArgumentParser
import CaidControl
import CaidCore
import CaidSystemd
import Logging
import ServiceLifecycle
import UnixSignals

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the daemon (what systemd starts).",
        discussion: """
            Reads cai.env, supervises caid's services, answers health probes on CAID_HEALTH_SOCKET and talks to \
            systemd (Type=notify, watchdog). SIGTERM or SIGINT stops it gracefully within 10 seconds.
            """
    )

    @OptionGroup var env: EnvOption

    func run() async throws {
        let config = try env.load()
        LogDestination.bootstrap(level: config.logLevel)
        let logger = Logger(label: "caid")
        let registry = HealthRegistry()
        let metrics = HealthMetrics()
        metrics.bootstrap()

        let services = ServiceCatalog.services(for: config, logger: logger)
        if services.isEmpty {
            logger.warning("""
                this build of caid supervises no model services yet (attestation, key, fetch, mount and gateway \
                are still to come): it runs its health socket and systemd integration only
                """)
        }
        let supervisor = Supervisor(services: services, registry: registry, logger: logger)
        let health = HealthServer(path: config.healthSocket, registry: registry, metrics: metrics, logger: logger)
        let notifier = NotifierService(registry: registry, logger: logger)

        // Started in this order and stopped in reverse: systemd hears STOPPING first, the services stop next, and
        // the health socket answers until the end.
        var groupConfig = ServiceGroupConfiguration(
            services: [
                .init(service: health, serviceName: "health"),
                .init(service: supervisor, serviceName: "supervisor"),
                .init(service: notifier, serviceName: "systemd"),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger)
        groupConfig.maximumGracefulShutdownDuration = .seconds(10)
        logger.info("caid starting", metadata: ["config": "\(config.file)", "socket": "\(config.healthSocket)"])
        do {
            try await ServiceGroup(configuration: groupConfig).run()
        } catch {
            logger.critical("caid cannot go on: \(error)")
            throw ExitCode.failure
        }
        logger.info("caid stopped")
    }
}

/// The services `caid run` supervises, built from the configuration. Later releases add attestation, key, fetch,
/// mount and gateway here; none is registered before it does real work.
enum ServiceCatalog {
    static func services(for config: CaidConfig, logger: Logger) -> [ServiceSpec] {
        []
    }
}
