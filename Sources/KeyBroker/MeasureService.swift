import Attestation
import CaidBase
import CaidCore
import Logging
import ServiceLifecycle

/// The `measure` service of `caid run`: once the fetch has checked every object against the model manifest, it
/// extends RTMR3 with the model (unless RTMR3 holds it already since boot) and records the event in the AA event
/// log, before any evidence is made for Trustee: the attestation service starts after it.
public struct MeasureService: Service {
    private let identity: ModelIdentity
    private let measurements: RuntimeMeasurements?
    private let unavailable: String
    private let unavailableIsExpected: Bool
    private let modelID: String
    private let handle: ServiceHandle

    /// - Parameters:
    ///   - measurements: nil when this host has no RTMR interface; `unavailable` then says why, and
    ///     `unavailableIsExpected` whether that is no surprise (the sample attester) rather than a TEE without one.
    ///   - modelID: the PAI event's `model-id` (`CAID_MODEL_ID`).
    public init(
        identity: ModelIdentity, measurements: RuntimeMeasurements?, unavailable: String, unavailableIsExpected: Bool = false, modelID: String,
        handle: ServiceHandle
    ) {
        self.identity = identity
        self.measurements = measurements
        self.unavailable = unavailable
        self.unavailableIsExpected = unavailableIsExpected
        self.modelID = modelID
        self.handle = handle
    }

    public func run() async throws {
        let verified = await identity.verified()
        if Task.isCancelled { return }
        guard let digest = verified else {
            handle.logger.warning("the bucket has no model manifest (<prefix>.caid-manifest.json beside the model): the model is not measured, and a policy that requires a model digest refuses this host; write one with caid manifest")
            await handle.running("not measured: the bucket has no model manifest")
            return await idle()
        }
        guard let measurements else {
            // Loud on a TEE: the model identity exists but no quote will carry it. The sample attester proves
            // nothing anyway and says so at start.
            let message: Logger.Message = "model \(digest) cannot be measured: \(unavailable); policies that require a model digest refuse this host"
            if unavailableIsExpected { handle.logger.warning(message) } else { handle.logger.critical(message) }
            await handle.running("model \(digest) NOT measured: \(unavailable)")
            return await idle()
        }
        let outcome: RuntimeMeasurements.Outcome
        do {
            outcome = try measurements.measure(modelDigest: digest, modelID: modelID)
        } catch {
            throw ServiceFailure("cannot measure model \(digest) into RTMR3: \(error.message)", permanent: true)
        }
        let how = outcome.extended ? "extended now" : "already measured since boot (not extended again)"
        await handle.running("model \(digest) in RTMR3 through \(outcome.interface), \(how); \(measurements.form.rawValue) event log \(measurements.logFile), \(outcome.events) events")
        handle.logger.notice("model measured", metadata: ["digest": "\(digest)", "interface": "\(outcome.interface)", "extended": "\(outcome.extended)"])
        await idle()
    }

    private func idle() async {
        while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
    }
}
