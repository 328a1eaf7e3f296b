import ArgumentParser
import AsyncHTTPClient
import Attestation
import AttestationService
import CaidBase
import CaidConfiguration
import CaidCore
import CaidSystemd
import Gateway
import Logging
import ServiceLifecycle
import UnixSignals

struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "Run the attested gateway alone, in the foreground, as the TNG egress does.",
        discussion: """
            Serves TNG clients on CAID_GATEWAY_PORT (mapping mode) or on MODEL_SERVICE_PORT through nat rules \
            (netfilter mode, the default; needs root), with the evidence CAID_ATTESTER selects in its certificate. \
            `caid run` runs the same gateway as one of its services; this command is for hosts where the model is \
            served otherwise, and for trying the gateway. Ctrl-C or SIGTERM stops it and removes the nat rules. \
            Exit status: 0 stopped, 1 failed, 78 configuration error (or the gateway is off).
            """
    )

    @OptionGroup var env: EnvOption

    func run() async throws {
        let config = try env.load()
        LogDestination.bootstrap(level: config.logLevel)
        let logger = Logger(label: "caid.gateway")
        guard let gateway = GatewayConfiguration(config) else {
            printError("caid gateway: CAID_GATEWAY_MODE is off in \(config.file); set netfilter or mapping")
            throw ExitCode(ConfigError.exitCode)
        }
        let provider: EvidenceProvider
        do {
            provider = try KeyBrokerSetup.provider(for: config)
        } catch {
            printError("caid gateway: \(error)")
            throw ExitCode(ConfigError.exitCode)
        }
        let serviceGuard: ServiceGuard?
        do {
            serviceGuard = try await ServiceGuardSetup.installOffThePool(for: config, logger: logger)
        } catch {
            printError("caid gateway: \(error)")
            throw ExitCode.failure
        }
        let registry = HealthRegistry()
        let handle = ServiceHandle(name: "gateway", registry: registry, logger: logger)
        // Only the passport model talks to the Attestation Service.
        let http = gateway.attestationModel == .passport ? HTTPTimeouts.client(read: config.readTimeout) : nil
        let passport = http.map { AttestationServiceClient.trustee(config, http: $0) }
        let service = GatewayService(configuration: gateway, attester: provider.attester, gpu: provider.gpu, attestationService: passport, handle: handle)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: service, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup),
        ]
        if let serviceGuard { services.append(.init(service: ServiceGuardWatch(serviceGuard: serviceGuard, interval: config.gateway.ruleCheckInterval, logger: logger))) }
        let group = ServiceGroup(configuration: .init(
            services: services,
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
            try? await http?.shutdown()
            if let serviceGuard { await ServiceGuardSetup.removeOffThePool(serviceGuard) }
        } catch {
            try? await http?.shutdown()
            printError("caid gateway: \(error)")
            throw ExitCode((error as? any ClassifiedFailure)?.isPermanent == true ? ConfigError.exitCode : 1)
        }
    }
}
