import Attestation
import CaidCore
import Foundation
import Logging
import ServiceLifecycle

extension NatError: ClassifiedFailure {
    /// No iptables or no CAP_NET_ADMIN does not fix itself.
    public var isPermanent: Bool { true }
}

/// The `gateway` service of `caid run` (and all of `caid gateway`): makes an attested certificate, installs the
/// nat rules in `netfilter` mode, listens, renews the certificate with fresh evidence on a timer, and on stop closes
/// the listener and removes the rules.
public struct GatewayService: Service {
    private let configuration: GatewayConfiguration
    private let attester: any Attester
    private let gpu: GPUAttester?
    private let handle: ServiceHandle

    public init(configuration: GatewayConfiguration, attester: any Attester, gpu: GPUAttester? = nil, handle: ServiceHandle) {
        self.configuration = configuration
        self.attester = attester
        self.gpu = gpu
        self.handle = handle
    }

    public func run() async throws {
        let logger = handle.logger
        let certificate = try certificate()
        let server = try GatewayServer(configuration: configuration, certificate: certificate, logger: logger)
        var rules: NatRules?
        if configuration.mode == .netfilter {
            let nat = NatRules(servicePort: configuration.servicePort, listenPort: configuration.listenPort)
            try nat.install()
            rules = nat
            logger.info("nat rules installed: TCP to port \(configuration.servicePort) from other hosts goes to the gateway on \(configuration.listenPort)")
        }
        defer {
            if let rules {
                rules.remove()
                logger.info("nat rules removed")
            }
        }
        let port: Int
        do {
            port = try await server.start()
        } catch {
            throw ServiceFailure("cannot listen on \(configuration.listenHost):\(configuration.listenPort): \(error)")
        }
        let route = configuration.mode == .netfilter
            ? "clients dial port \(configuration.servicePort), redirected to \(port)"
            : "clients dial port \(port), forwarded to \(configuration.serviceHost):\(configuration.servicePort)"
        await handle.running("\(configuration.mode.rawValue): \(route); \(attester.tee) evidence in the certificate")
        logger.notice("attested gateway listening", metadata: ["port": "\(port)", "mode": "\(configuration.mode.rawValue)"])
        // Ends on cancellation (the supervisor) or on graceful shutdown (`caid gateway` in its own service group).
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: configuration.certificateLifetime)
                if Task.isCancelled { break }
                do {
                    try server.renew(try self.certificate())
                    logger.debug("gateway certificate renewed with fresh evidence")
                } catch {
                    // The current certificate stays valid for hours; keep serving it and say why renewal failed.
                    logger.warning("cannot renew the gateway certificate, keeping the current one: \(error)")
                }
            }
        }
        await server.stop()
    }

    private func certificate() throws -> AttestedCertificate {
        do {
            let certificate = try AttestedCertificate.make(attester: attester, gpu: gpu)
            if certificate.eventLogOmitted {
                handle.logger.warning("the CC event log was left out of the gateway certificate to keep it under 64 KiB for TNG 2.2.1 clients")
            }
            return certificate
        } catch let error as VerificationError {
            throw ServiceFailure(error.message, permanent: true)
        } catch {
            throw ServiceFailure("cannot make the attested certificate: \(error)")
        }
    }
}

extension GatewayConfiguration {
    /// The gateway configuration `CAID_GATEWAY_*` and `MODEL_SERVICE_PORT` describe; nil when the gateway is off.
    public init?(_ config: CaidConfig) {
        let mode: Mode
        switch config.gateway.mode {
        case .off: return nil
        case .netfilter: mode = .netfilter
        case .mapping: mode = .mapping
        }
        self.init(mode: mode, listenPort: config.gateway.port, servicePort: config.modelServicePort)
        maxConnections = config.gateway.maxConnections
        maxStreamsPerConnection = config.gateway.maxStreams
        maxResets = config.gateway.maxResets
        handshakeTimeout = config.gateway.handshakeTimeout
        idleTimeout = config.gateway.idleTimeout
        certificateLifetime = config.gateway.certificateRefresh
    }
}
