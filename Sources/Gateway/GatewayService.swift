import AsyncHTTPClient
import Attestation
import AttestationService
import CaidBase
import CaidCore
import Foundation
import CGNU
import Logging
import RATLS
import ServiceLifecycle
import Synchronization

extension NatError: ClassifiedFailure {
    /// No iptables or no CAP_NET_ADMIN does not fix itself.
    public var isPermanent: Bool { true }
}

/// The `gateway` service of `caid run` (and all of `caid gateway`): makes an attested certificate, installs the
/// nat rules in `netfilter` mode, listens, renews the certificate on a timer, and on stop closes the listener and
/// removes the rules. In the passport model each certificate carries a token from the Attestation Service, renewed
/// before it expires.
public struct GatewayService: Service {
    private let configuration: GatewayConfiguration
    private let attester: any Attester
    private let gpu: GPUAttester?
    private let attestationService: AttestationServiceClient?
    private let handle: ServiceHandle

    /// - Parameter attestationService: where passport tokens come from; required in the passport model.
    public init(
        configuration: GatewayConfiguration, attester: any Attester, gpu: GPUAttester? = nil,
        attestationService: AttestationServiceClient? = nil, handle: ServiceHandle
    ) {
        self.configuration = configuration
        self.attester = attester
        self.gpu = gpu
        self.attestationService = attestationService
        self.handle = handle
    }

    public func run() async throws {
        let logger = handle.logger
        let first = try await certificate()
        let server = try GatewayServer(configuration: configuration, certificate: first, logger: logger)
        var rules: NatRules?
        if configuration.mode == .netfilter {
            let nat = NatRules(servicePort: configuration.servicePort, listenPort: configuration.listenPort)
            try await Blocking.run { () throws(NatError) in try nat.install() }
            rules = nat
            logger.info("nat rules installed: TCP to port \(configuration.servicePort) from other hosts goes to the gateway on \(configuration.listenPort)")
        }
        let port: Int
        do {
            port = try await server.start()
        } catch {
            await Self.remove(rules, logger: logger)
            throw ServiceFailure("cannot listen on \(configuration.listenHost):\(configuration.listenPort): \(error)")
        }
        let route = configuration.mode == .netfilter
            ? "clients dial port \(configuration.servicePort), redirected to \(port)"
            : "clients dial port \(port), forwarded to \(configuration.serviceHost):\(configuration.servicePort)"
        let detail = GatewayDetail(prefix: "\(configuration.mode.rawValue): \(route)", carried: carried(first), budget: server.budget)
        await handle.running(detail.text)
        logger.notice("attested gateway listening", metadata: ["port": "\(port)", "mode": "\(configuration.mode.rawValue)", "model": "\(configuration.attestationModel.rawValue)"])
        // Ends on cancellation (the supervisor) or on graceful shutdown (`caid gateway` in its own service group).
        let installed = rules
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                if let rules = installed {
                    group.addTask { await Self.watch(rules, every: configuration.ruleCheckInterval, logger: logger) }
                }
                let renewer = CertificateRenewer(purpose: "gateway", refresh: configuration.certificateLifetime, logger: logger) {
                    try await self.certificate()
                } install: { fresh in
                    try server.renew(fresh)
                    detail.carried = self.carried(fresh)
                    await self.handle.running(detail.text)
                }
                group.addTask { await renewer.run(first: first) }
                group.addTask { await Self.reportBudget(detail, every: Self.budgetReportInterval, handle: self.handle) }
                await group.waitForAll()
            }
        }
        await server.stop()
        await Self.remove(rules, logger: logger)
    }

    /// Removes the nat rules, if any: iptables processes to wait for, so off the cooperative pool.
    private static func remove(_ rules: NatRules?, logger: Logger) async {
        guard let rules else { return }
        await Blocking.run { rules.remove() }
        logger.info("nat rules removed")
    }

    /// Checks the nat rules until cancelled and puts them back when they are gone. Without them clients of the
    /// service port meet the guard (``ServiceGuard``), so nothing leaks meanwhile, but nothing is served either.
    static func watch(_ rules: NatRules, every interval: Duration, logger: Logger) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            if Task.isCancelled { return }
            // iptables is a child process to wait for: off the cooperative pool.
            guard await !Blocking.run({ rules.isComplete() }) else { continue }
            do {
                try await Blocking.run { () throws(NatError) in try rules.install() }
                logger.error("the nat rules redirecting port \(rules.servicePort) to the gateway were gone (a firewall reload?); restored")
            } catch {
                logger.critical("the nat rules redirecting port \(rules.servicePort) to the gateway are gone and cannot be restored; clients are refused until they are: \(error)")
            }
        }
    }

    /// How often health shows the budget; the log names new refusals ten times less often.
    static let budgetReportInterval: Duration = .seconds(1)

    /// Puts what the gateway holds and refused into its health detail until cancelled, and logs refusals at most
    /// once per ten intervals: a flood of refused connections would flood the journal if each were logged.
    static func reportBudget(_ detail: GatewayDetail, every interval: Duration, handle: ServiceHandle) async {
        var logged = detail.budget.snapshot.refused
        var shown = detail.text
        var ticks = 0
        var peakStreams = 0
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            if Task.isCancelled { return }
            ticks += 1
            // After a burst (a thousand streams buffer a few MiB each way) the allocator keeps the freed heap: give it
            // back once the gateway is quiet, so that resident memory returns to what caid holds at rest.
            let streams = detail.budget.snapshot.streams
            peakStreams = max(peakStreams, streams)
            if streams == 0, peakStreams >= 100 {
                peakStreams = 0
                _ = caid_release_free_heap()
            }
            let text = detail.text
            if text != shown {
                shown = text
                await handle.progress(text)
            }
            guard ticks % 10 == 0 else { continue }
            let now = detail.budget.snapshot
            let new = now.refused.compactMap { reason, count -> String? in
                let delta = count - logged[reason, default: 0]
                return delta > 0 ? "\(delta) by the \(reason) limit" : nil
            }.sorted()
            if !new.isEmpty {
                handle.logger.warning("the gateway refused \(new.joined(separator: ", ")) in the last \((interval * 10).components.seconds) s (see CAID_GATEWAY_MAX_CONNECTIONS, CAID_GATEWAY_MAX_CONNECTIONS_PER_SOURCE, CAID_GATEWAY_STREAM_BUDGET); now \(now.summary)")
            }
            logged = now.refused
        }
    }

    private func carried(_ certificate: AttestedCertificate) -> String {
        guard let expiry = certificate.tokenExpiry else { return "\(attester.tee) evidence in the certificate (background check)" }
        return "an Attestation Service token for \(attester.tee) evidence in the certificate (passport), valid until \(expiry)"
    }

    private func certificate() async throws -> AttestedCertificate {
        do {
            switch configuration.attestationModel {
            case .backgroundCheck:
                // Fresh TDX and GPU evidence blocks for a while: off the cooperative pool.
                let (attester, gpu) = (self.attester, self.gpu)
                let certificate = try await Blocking.run { try AttestedCertificate.make(attester: attester, gpu: gpu) }
                if certificate.eventLogOmitted {
                    handle.logger.warning("the CC event log was left out of the gateway certificate to keep it under 64 KiB for TNG 2.2.1 clients")
                }
                return certificate
            case .passport:
                guard let attestationService else {
                    throw ServiceFailure("the passport model needs an Attestation Service, and none was given", permanent: true)
                }
                let (attester, gpu) = (self.attester, self.gpu)
                let draft = try await Blocking.run { try AttestedCertificate.draft(attester: attester, gpu: gpu) }
                // The same request a background-check client sends (rats-cert's converter is shared by both).
                let token = try await attestationService.token(tee: draft.tee, evidence: draft.evidence.canonicalBytes, runtimeData: draft.runtimeData)
                // What passport clients check, checked before serving it: a token for other evidence, another key
                // or without the policy would only make every client fail.
                _ = try TokenVerifier.verify(token, runtimeData: draft.runtimeData, policyIDs: attestationService.policyIDs)
                return try AttestedCertificate.passport(draft, token: token)
            }
        } catch let error as ServiceFailure {
            throw error
        } catch let error as VerificationError where configuration.attestationModel == .passport {
            // The Attestation Service may answer later: not permanent.
            throw ServiceFailure("cannot get a passport token for the gateway certificate: \(error.message)")
        } catch let error as VerificationError {
            throw ServiceFailure(error.message, permanent: true)
        } catch {
            throw ServiceFailure("cannot make the attested certificate: \(error)")
        }
    }
}

/// The gateway's health detail: its route, what its certificate carries, and its budget now.
final class GatewayDetail: Sendable {
    let prefix: String
    let budget: GatewayBudget
    private let carriedNow: Mutex<String>

    init(prefix: String, carried: String, budget: GatewayBudget) {
        self.prefix = prefix
        self.budget = budget
        self.carriedNow = Mutex(carried)
    }

    var carried: String {
        get { carriedNow.withLock { $0 } }
        set { carriedNow.withLock { $0 = newValue } }
    }

    var text: String { "\(prefix); \(carried); \(budget.snapshot.summary)" }
}
