import CaidBase
import CaidConfiguration
import Gateway
import Logging
import ServiceLifecycle

/// The guard of `MODEL_SERVICE_PORT` (``ServiceGuard``) as `caid run` and `caid gateway` use it: installed (or
/// adopted from a killed caid) before anything else starts, watched while caid runs, removed on a clean stop only.
enum ServiceGuardSetup {
    /// Installs the guard when the gateway is on and `CAID_SERVICE_GUARD` is not off. - Returns: nil when off.
    /// - Throws: ``ServiceGuardError`` when the rules cannot be installed; caid does not start then (fail closed).
    static func install(for config: CaidConfig, logger: Logger) throws(ServiceGuardError) -> ServiceGuard? {
        guard config.gateway.mode != .off else { return nil }
        guard config.gateway.serviceGuard else {
            logger.warning("CAID_SERVICE_GUARD=off: MODEL_SERVICE_PORT \(config.modelServicePort) is reachable from the network whenever the gateway is not running")
            return nil
        }
        let serviceGuard = ServiceGuard(servicePort: config.modelServicePort)
        let states = try serviceGuard.ensure()
        let adopted = states.values.allSatisfy { $0 == .intact }
        logger.notice(
            "\(adopted ? "adopted the guard left by an earlier caid" : "guard installed"): TCP to port \(config.modelServicePort) from the network is refused (IPv4 and IPv6) unless it comes through the gateway",
            metadata: ["chains": "\(ServiceGuardRules.inputChain) \(ServiceGuardRules.forwardChain)"])
        return serviceGuard
    }

    /// ``install(for:logger:)`` on a thread of its own: it runs `iptables` and waits for each run.
    static func installOffThePool(for config: CaidConfig, logger: Logger) async throws(ServiceGuardError) -> ServiceGuard? {
        try await Blocking.run { () throws(ServiceGuardError) in try install(for: config, logger: logger) }
    }

    /// ``ServiceGuard/remove()`` on a thread of its own, for the same reason.
    static func removeOffThePool(_ serviceGuard: ServiceGuard) async {
        await Blocking.run { serviceGuard.remove() }
    }
}

/// Checks the guard every `CAID_GATEWAY_RULE_CHECK` while caid runs and restores what a firewall reload flushed.
struct ServiceGuardWatch: Service {
    let serviceGuard: ServiceGuard
    let interval: Duration
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await serviceGuard.watch(every: interval, logger: logger)
        }
    }
}
