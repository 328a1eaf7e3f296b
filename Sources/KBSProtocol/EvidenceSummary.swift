import Attestation

/// What one attestation sent to Trustee, for `caid attest`, health and the logs: the TEE, the GPU evidence form,
/// and the GPUs left out because NVML could not give their evidence.
public struct EvidenceSummary: Sendable, CustomStringConvertible {
    public var tee: TEEType
    /// nil: no GPU evidence (no NVML, no GPU in CC mode, or `CAID_GPU_EVIDENCE=off`).
    public var gpuForm: GPUEvidenceForm?
    public var gpuCount: Int
    public var missingGPUs: [GPUAttester.MissingDevice]

    public init(tee: TEEType, gpuForm: GPUEvidenceForm? = nil, gpuCount: Int = 0, missingGPUs: [GPUAttester.MissingDevice] = []) {
        self.tee = tee
        self.gpuForm = gpuForm
        self.gpuCount = gpuCount
        self.missingGPUs = missingGPUs
    }

    /// "tdx evidence with 1 GPU (embedded form) (GPUs left out: GPU 1 (GPU-…): NVML … failed: Not Supported)".
    public var description: String {
        var text = "\(tee) evidence"
        if let gpuForm {
            text += " with \(gpuCount) GPU\(gpuCount == 1 ? "" : "s") (\(gpuForm) form)"
        }
        if !missingGPUs.isEmpty {
            text += " (GPUs left out: " + missingGPUs.map(\.description).joined(separator: "; ") + ")"
        }
        return text
    }
}
