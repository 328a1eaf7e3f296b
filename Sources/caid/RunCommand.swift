import ArgumentParser
import AttestationService
import CaidBase
import CaidConfiguration
import Foundation
import Attestation
import AsyncHTTPClient
import CacheFS
import Gateway
import KeyBroker
import ObjectStore
import OSSProtocol
import RATLS
import Sharing
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
        // First, before any secret is read: on success this does not return but starts caid again.
        let wipingFailure = FreedMemoryWiping.ensure()
        // The only place caid refuses a configuration at start (exit 78, which the unit does not restart).
        let (config, preflight) = try env.loadForRun()
        LogDestination.bootstrap(level: config.logLevel)
        let logger = Logger(label: "caid")
        if let wipingFailure { logger.warning("\(wipingFailure)") }
        // Done first thing in main; said here, where the journal hears it.
        let hardening = ProcessHardening.disableCoreDumps()
        if !hardening.coreLimitZero || !hardening.notDumpable {
            logger.warning("cannot turn core dumps off (RLIMIT_CORE=0: \(hardening.coreLimitZero), PR_SET_DUMPABLE=0: \(hardening.notDumpable)); a crash may write secrets to disk")
        }
        let registry = HealthRegistry()
        let metrics = HealthMetrics()
        metrics.bootstrap()

        let catalog = ServiceCatalog(config: config, preflight: preflight, logger: logger)
        // Before attestation and before any service: the inference port is closed to the network from here to a
        // clean stop, whatever the gateway does (and after a crash, until the next caid adopts the rules).
        let serviceGuard: ServiceGuard?
        do {
            serviceGuard = try await ServiceGuardSetup.installOffThePool(for: config, logger: logger)
        } catch {
            logger.critical("caid cannot start: \(error)")
            printError("caid run: \(error)")
            await catalog.shutdown()
            throw ExitCode.failure
        }
        let supervisor = Supervisor(services: catalog.specs, registry: registry, logger: logger)
        let health = HealthServer(path: config.healthSocket, group: preflight.healthGroup, registry: registry, metrics: metrics, logger: logger)
        let notifier = NotifierService(registry: registry, logger: logger)

        // Started in this order and stopped in reverse: systemd hears STOPPING first, the services stop next, and
        // the health socket answers until the end.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: health, serviceName: "health"),
            .init(service: supervisor, serviceName: "supervisor"),
            .init(service: notifier, serviceName: "systemd"),
        ]
        if let serviceGuard {
            services.append(.init(service: ServiceGuardWatch(serviceGuard: serviceGuard, interval: config.gateway.ruleCheckInterval, logger: logger), serviceName: "guard"))
        }
        var groupConfig = ServiceGroupConfiguration(
            services: services,
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger)
        groupConfig.maximumGracefulShutdownDuration = .seconds(10)
        logger.info("caid starting", metadata: ["config": "\(config.file)", "socket": "\(config.healthSocket)"])
        do {
            try await ServiceGroup(configuration: groupConfig).run()
        } catch {
            await catalog.shutdown()
            // Not a clean stop: the guard stays, and the caid systemd restarts adopts it.
            logger.critical("caid cannot go on: \(error)")
            throw ExitCode.failure
        }
        await catalog.shutdown()
        if let serviceGuard {
            await ServiceGuardSetup.removeOffThePool(serviceGuard)
            logger.notice("guard of port \(serviceGuard.servicePort) removed (clean stop)")
        }
        logger.info("caid stopped")
    }
}

/// The services `caid run` supervises, built from the configuration, and the HTTP clients they share.
///
/// `fetch` brings the ciphertext and checks it against the model manifest; `measure` (after fetch) extends RTMR3
/// with the model's digest; `attestation` (after measure, when this host can measure) proves the host to Trustee;
/// `key` (after attestation) fetches `MODEL_KEY_ID`; `cachefs` mounts once both are there; `gateway` (after attestation) serves clients while
/// the model may still be arriving. All are required: caid is ready when the model is mounted and the gateway
/// listens.
struct ServiceCatalog {
    let specs: [ServiceSpec]
    private let clients: [HTTPClient]

    /// - Parameter preflight: what ``RunPreflight`` found usable; nothing here refuses the configuration.
    init(config: CaidConfig, preflight: RunPreflight, logger: Logger) {
        let provider = preflight.provider
        if provider.attester.tee == .sample {
            logger.warning("CAID_ATTESTER=sample: this host sends sample evidence, which proves nothing; use it only for development")
        }
        let kbsHTTP = KeyBrokerSetup.httpClient(roots: preflight.trusteeRoots, readTimeout: config.readTimeout)
        var options = Fetcher.Options()
        options.requireManifest = config.attestation.requireManifest
        let streaming = config.mount.streaming ? StreamingDownload(readTimeout: config.mount.readTimeout) : nil
        options.streaming = streaming
        var sharing: ServiceSpec?
        let tokenTrust = preflight.tokenTrust
        if !config.sharingPeers.isEmpty {
            do {
                // Peers check each other with Trustee's Attestation Service under TRUSTEE_POLICY.
                // Sample peers only in a development group, where this host sends sample evidence itself.
                let verifier = PeerVerifier(
                    attestationService: config.attestationServiceAddress, policyIDs: [config.trusteePolicy], tokenTrust: tokenTrust,
                    allowSample: provider.attester.tee == .sample, http: kbsHTTP)
                // The same evidence as the gateway's certificate: the TDX quote and, on a GPU host, the GPUs'.
                let certificate = try AttestedCertificate.make(attester: provider.attester, gpu: provider.gpu)
                let peers = try AttestedPeers(certificate: certificate, verifier: verifier, logger: logger)
                let port = Int(config.sharingPort)
                let source = PeerRangeSource(hosts: config.sharingPeers, client: PeerObjectClient(peers: peers, port: port), logger: logger)
                var limits = PeerObjectServer.Limits()
                limits.maxConnections = config.sharingMaxConnections
                limits.handshakeTimeout = config.sharingHandshakeTimeout
                let server = PeerObjectServer(
                    peers: peers, cacheDirectory: config.modelCacheDirectory, prefix: config.objectStorage.prefix, limits: limits, logger: logger)
                options.alternate = source
                sharing = ServiceSpec(name: "sharing", required: false) {
                    SharingService(
                        peers: peers, first: certificate, server: server, source: source, port: port, attester: provider.attester,
                        gpu: provider.gpu, certificateRefresh: config.gateway.certificateRefresh, handle: $0)
                }
            } catch {
                // Sharing only saves bandwidth: without it this host downloads from OSS, as it would alone.
                logger.error("model sharing is off for this run: cannot make the attested sharing certificate: \(error)")
            }
        }
        let (fetcher, ossHTTP) = ObjectStoreSetup.fetcher(for: config, endpoint: preflight.ossEndpoint, options: options, logger: logger)
        clients = [kbsHTTP, ossHTTP]
        let kbs = KeyBrokerSetup.client(for: config, provider: provider, http: kbsHTTP, logger: logger)
        let handoff = KeyHandoff()
        let resource = config.modelKeyID
        let cache = config.modelCacheDirectory
        let mountpoint = config.modelMountPoint
        let ownership = CacheFileSystem.Ownership(uid: config.mount.uid, gid: config.mount.gid, fileMode: mode_t(config.mount.mode))
        let repairs = CacheRepairs()
        let identity = ModelIdentity()
        let measurements = provider.measurements
        // The provider already holds the one RuntimeMeasurements of this process; only the reason is needed here.
        let unavailable = measurements == nil ? KeyBrokerSetup.measurements(for: config).unavailable : ""
        let modelID = KeyBrokerSetup.modelID(for: config)
        // The order the model's identity needs: verified (fetch), measured (measure), then attested, keyed, mounted,
        // served. Without measurement registers the evidence cannot carry the model, so nothing waits for it.
        let attestationAfter = measurements == nil ? [] : ["measure"]
        var specs = [
            ServiceSpec(name: "measure", dependencies: ["fetch"]) {
                MeasureService(
                    identity: identity, measurements: measurements, unavailable: unavailable,
                    unavailableIsExpected: provider.attester.tee == .sample, modelID: modelID, handle: $0)
            },
            ServiceSpec(name: "attestation", dependencies: attestationAfter) { AttestationService(client: kbs, handle: $0) },
            ServiceSpec(name: "key", dependencies: ["attestation"]) { KeyService(client: kbs, resource: resource, handoff: handoff, handle: $0) },
            ServiceSpec(name: "fetch") { FetchService(fetcher: fetcher, handle: $0, repairs: repairs, identity: identity) },
            ServiceSpec(name: "cachefs", dependencies: ["key", "fetch"]) { handle in
                // vLLM usually runs in a container as another user: the mount shows CAID_MOUNT_OWNER/MODE, which the
                // kernel enforces for everyone.
                MountService(
                    cipherDirectory: cache, mountpoint: mountpoint, ownership: ownership,
                    password: { try await handoff.take() },
                    verify: {
                        // While a streaming fetch runs the cache is not whole yet: its readers wait in the ledger,
                        // and each object is checked as it completes.
                        if let streaming, !streaming.isFinished { return }
                        // The manifest is the defence gocryptfs lacks against whole files swapped or renamed.
                        do {
                            // Files read again where their stamps changed: off the cooperative pool.
                            let reread = try await Blocking.run { try fetcher.verifyCache() }
                            if reread > 0 { handle.logger.warning("\(reread) cached files changed on disk since the fetch; their CRC-64 still matches") }
                        } catch {
                            repairs.request()
                            throw ServiceFailure("\(error)")
                        }
                    },
                    streaming: streaming.map { download in
                        MountService.Streaming(arrival: DownloadArrival(download: download)) {
                            let progress = download.progress
                            return StreamingStatus(
                                localBytes: progress.localBytes, totalBytes: progress.totalBytes, waitingReads: progress.waitingReads,
                                refetching: progress.refetching, arriving: progress.streaming)
                        }
                    },
                    handle: handle)
            },
        ]
        if let gateway = GatewayConfiguration(config) {
            let passport = gateway.attestationModel == .passport ? AttestationServiceClient.trustee(config, http: kbsHTTP) : nil
            specs.append(ServiceSpec(name: "gateway", dependencies: ["attestation"]) {
                GatewayService(configuration: gateway, attester: provider.attester, gpu: provider.gpu, attestationService: passport, handle: $0)
            })
        } else {
            logger.warning("CAID_GATEWAY_MODE=off: the inference service is not protected by an attested gateway")
        }
        if let sharing { specs.append(sharing) }
        self.specs = specs
    }

    func shutdown() async {
        for client in clients { try? await client.shutdown() }
    }
}

/// The streaming mount's view of the fetcher's ledger: CacheFS and ObjectStore do not know each other.
struct DownloadArrival: CiphertextArrival {
    let download: StreamingDownload

    func generation(of path: String) -> UInt64? {
        download.generation(of: path)
    }

    func releaseWaitingReads() {
        download.releaseWaitingReads()
    }

    func waitForCiphertext(_ path: String, range: Range<UInt64>, generation: UInt64) -> String? {
        download.waitForCiphertext(path, range: range, generation: generation)
    }
}
