import AsyncHTTPClient
import AttestationService
import CaidConfiguration
import Foundation
import Gateway
import KeyBroker

// The one place where `cai.env`, as ``CaidConfig`` reads it, becomes each module's own options: the modules below
// the daemon know nothing of the file, its keys or its defaults.

extension KBSClient.DialectChoice {
    /// `CAID_KBS_PROTOCOL`.
    init(_ setting: CaidConfig.KBSProtocol) {
        switch setting {
        case .auto: self = .auto
        case .legacy: self = .legacy
        case .current: self = .current
        }
    }
}

extension KBSClient.GPUEvidenceChoice {
    /// `CAID_GPU_EVIDENCE`.
    init(_ setting: CaidConfig.GPUEvidence) {
        switch setting {
        case .auto: self = .auto
        case .device: self = .device
        case .embedded: self = .embedded
        case .off: self = .off
        }
    }
}

extension GatewayConfiguration {
    /// The gateway configuration `CAID_GATEWAY_*` and `MODEL_SERVICE_PORT` describe; nil when the gateway is off.
    init?(_ config: CaidConfig) {
        let mode: Mode
        switch config.gateway.mode {
        case .off: return nil
        case .netfilter: mode = .netfilter
        case .mapping: mode = .mapping
        }
        self.init(mode: mode, listenPort: config.gateway.port, servicePort: config.modelServicePort)
        maxConnections = config.gateway.maxConnections
        maxConnectionsPerSource = config.gateway.maxConnectionsPerSource
        streamBudget = config.gateway.streamBudget
        streamIdleTimeout = config.gateway.streamIdleTimeout
        connectionBuffer = config.gateway.connectionBufferMiB << 20
        maxStreamsPerConnection = config.gateway.maxStreams
        firstBytesTimeout = config.gateway.firstBytesTimeout
        maxResets = config.gateway.maxResets
        handshakeTimeout = config.gateway.handshakeTimeout
        idleTimeout = config.gateway.idleTimeout
        certificateLifetime = config.gateway.certificateRefresh
        ruleCheckInterval = config.gateway.ruleCheckInterval
        switch config.gateway.attestationModel {
        case .backgroundCheck: attestationModel = .backgroundCheck
        case .passport: attestationModel = .passport
        }
    }
}

extension AttestationServiceClient {
    /// Trustee's Attestation Service behind `TRUSTEE_URL` (its `as/` path) for `TRUSTEE_POLICY`: where passport
    /// tokens come from, as sharing peers verify each other there.
    static func trustee(_ config: CaidConfig, http: HTTPClient) -> AttestationServiceClient {
        AttestationServiceClient(address: config.attestationServiceAddress, policyIDs: [config.trusteePolicy], http: http)
    }
}

extension CaidConfig {
    /// Trustee's Attestation Service: the `as/` path under `TRUSTEE_URL`.
    var attestationServiceAddress: String {
        var trustee = trusteeURL.absoluteString
        if !trustee.hasSuffix("/") { trustee += "/" }
        return trustee + "as/"
    }
}
