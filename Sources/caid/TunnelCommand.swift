import ArgumentParser
import AttestationService
import Foundation
import AsyncHTTPClient
import CaidSystemd
import Gateway
import Logging
import RATLS
import ServiceLifecycle
import UnixSignals

struct TunnelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tunnel",
        abstract: "Run the client side of the attested gateway: an HTTP proxy whose every connection goes through a verified TEE.",
        discussion: """
            Point clients at the proxy (for example `curl -x http://127.0.0.1:41000 http://<host>:8080/v1/models`). \
            For each destination caid opens one TLS 1.3 + HTTP/2 connection, checks the gateway's certificate and \
            its TEE evidence with the Attestation Service (--as-addr, Trustee's `.../as/`), requires every --policy \
            in the token, and then carries each proxied connection in a stream of its own. A destination that does \
            not verify gets 403 with the reason; one outside --dst-filter gets 403 too. Proxy connections stay open \
            across requests. Works with caid's gateway and with TNG 2.2 egresses. \
            Exit status: 0 stopped, 1 failed, 64 bad arguments.
            """
    )

    @Option(help: ArgumentHelp("Where the proxy listens.", valueName: "host:port"))
    var listen = "127.0.0.1:41000"

    @Option(name: .customLong("as-addr"), help: ArgumentHelp("The Attestation Service, e.g. http://<trustee>/as/.", valueName: "url"))
    var asAddress: String

    @Option(name: .customLong("policy"), help: ArgumentHelp("A policy id the token must list (repeat for several; default: default).", valueName: "id"))
    var policies: [String] = []

    @Option(name: .customLong("token-cert"), help: ArgumentHelp(
        "A PEM file of certificates the Attestation Service's signing key must chain to, as TNG's trusted_certs_paths (repeat for several; default: the token's own key is taken).",
        valueName: "file"))
    var tokenCertificates: [String] = []

    @Option(name: .customLong("dst-filter"), help: ArgumentHelp(
        "A destination to tunnel, as TNG's dst_filters: domain[:port] (port 80 by default; *.foo.com, foo.* and * match several). Repeat for several; none: every destination. Others are refused, never sent unprotected.",
        valueName: "domain[:port]"))
    var dstFilters: [String] = []

    @Flag(name: .customLong("allow-sample"), help: ArgumentHelp(
        "Accept gateways whose certificate carries sample evidence (CAID_ATTESTER=sample: no TEE at all), for development. Refused by default, before the Attestation Service is asked."))
    var allowSample = false

    @Option(name: .customLong("require-model"), help: ArgumentHelp(
        "Tunnel only to gateways whose verified token says they measured this model (the digest caid encrypt printed). Repeat to allow several. The Attestation Service's replay of the gateway's event log decides; a policy naming the digest (docs/security.md) does the same for unmodified TNG clients.",
        valueName: "sha256:hex"))
    var requiredModels: [String] = []

    @Option(help: ArgumentHelp("Log level.", valueName: "level"))
    var logLevel: Logger.Level = .info

    func run() async throws {
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port) else {
            printError("caid tunnel: --listen '\(listen)' is not host:port")
            throw ExitCode(64)
        }
        let host = String(listen[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        let filter: DestinationFilter
        do {
            filter = try DestinationFilter(parsing: dstFilters)
        } catch {
            printError("caid tunnel: --dst-filter \(error)")
            throw ExitCode(64)
        }
        LogDestination.bootstrap(level: logLevel)
        let logger = Logger(label: "caid.tunnel")
        let http = HTTPTimeouts.client()
        let trust: TokenTrust?
        do {
            trust = tokenCertificates.isEmpty ? nil : try TokenTrust(pemFiles: tokenCertificates)
        } catch {
            printError("caid tunnel: --token-cert: \(error)")
            try? await http.shutdown()
            throw ExitCode(64)
        }
        if let bad = requiredModels.first(where: { !($0.hasPrefix("sha256:") && $0.count == 71) }) {
            printError("caid tunnel: --require-model '\(bad)' is not sha256:<64 hex digits>, as caid encrypt prints the model digest")
            try? await http.shutdown()
            throw ExitCode(64)
        }
        let verifier = PeerVerifier(
            attestationService: asAddress, policyIDs: policies, tokenTrust: trust, allowSample: allowSample, requiredModels: requiredModels, http: http)
        if allowSample {
            logger.warning("--allow-sample: gateways with sample evidence (no TEE) are accepted; use it only for development")
        }
        let proxy = TunnelProxy(client: try TunnelClient(verifier: verifier, logger: logger), filter: filter, logger: logger)
        do {
            let bound = try await proxy.start(host: host, port: port)
            printOut("caid tunnel: proxy listening on \(host):\(bound); verifying with \(verifier.attestationService) for policies \(verifier.policyIDs.joined(separator: ", "))")
            let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
            for await _ in signals { break }
        } catch {
            printError("caid tunnel: cannot listen on \(listen): \(error)")
            try? await http.shutdown()
            throw ExitCode.failure
        }
        await proxy.stop()
        try? await http.shutdown()
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
