import Attestation
import CaidBase
import CaidCore
import Foundation
import KBSProtocol
import Logging
import ServiceLifecycle

extension KBSError: ClassifiedFailure {
    /// Only a dialect neither side shares cannot fix itself; a refusal (403), a missing secret (404) or a failed
    /// evidence check can be fixed on Trustee's side while caid keeps trying with backoff.
    public var isPermanent: Bool { kind == .versionMismatch }
}

/// The `attestation` service of `caid run`: proves this host to Trustee, keeps a valid token, and attests again
/// shortly before the token expires, so `caid health` always says whether Trustee accepts this host now.
public struct AttestationService: Service {
    private let client: KBSClient
    private let handle: ServiceHandle

    public init(client: KBSClient, handle: ServiceHandle) {
        self.client = client
        self.handle = handle
    }

    public func run() async throws {
        // While Trustee does not answer, health says why the start waits (without counting it as progress).
        var session = try await client.attest { await handle.retrying($0) }
        while !Task.isCancelled {
            let expires = session.token.expires ?? Date().addingTimeInterval(300)
            await handle.running("\(session.evidence) accepted (KBS protocol \(session.dialect)); token valid until \(Self.clock(expires))")
            handle.logger.notice("attested to Trustee", metadata: [
                "tee": "\(session.tee)", "kbs_protocol": "\(session.dialect)",
                "gpu_evidence": "\(session.evidence.gpuForm.map(\.rawValue) ?? "none")", "gpus_left_out": "\(session.evidence.missingGPUs.count)",
            ])
            let wait = max(expires.timeIntervalSinceNow - 60, 30)
            try? await Task.sleep(for: .seconds(wait))
            if Task.isCancelled { break }
            session = try await client.reattest()
        }
    }

    static func clock(_ date: Date) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss 'UTC'"
        return formatter.string(from: date)
    }
}

/// The `key` service of `caid run`, the confidential data hub's job: fetches `MODEL_KEY_ID` and hands it to the
/// mount through a ``KeyHandoff``; fetches it again only when the mount asks again.
public struct KeyService: Service {
    private let client: KBSClient
    private let resource: ResourceURI
    private let handoff: KeyHandoff
    private let handle: ServiceHandle

    public init(client: KBSClient, resource: ResourceURI, handoff: KeyHandoff, handle: ServiceHandle) {
        self.client = client
        self.resource = resource
        self.handoff = handoff
        self.handle = handle
    }

    public func run() async throws {
        // Whatever ends this service, a password not yet taken is wiped.
        defer { handoff.wipe() }
        while !Task.isCancelled {
            let password = ModelPassword.fromResource(try await client.resource(resource))
            handoff.offer(password)
            await handle.running("model key \(resource) received; held in memory only until the mount takes it")
            handle.logger.notice("model key received", metadata: ["resource": "\(resource)"])
            await handoff.waitForDemand()
            if Task.isCancelled { break }
            handle.logger.info("the mount asks for the model key again; fetching it")
        }
    }
}

/// The gocryptfs password in a KBS resource.
public enum ModelPassword {
    /// Drops one trailing newline, as gocryptfs `-passfile` does, so a secret stored with `echo` works. The
    /// resource is wiped.
    public static func fromResource(_ resource: Secret) -> Secret {
        defer { resource.wipe() }
        return resource.withBytes { bytes in
            var end = bytes.count
            if end > 0, bytes[end - 1] == UInt8(ascii: "\n") { end -= 1 }
            return Secret(bytes[0..<end])
        }
    }
}
