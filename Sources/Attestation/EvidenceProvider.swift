/// The host's attester and, when NVML is there, its GPUs: everything that goes into one attestation.
public struct EvidenceProvider: Sendable {
    public let attester: any Attester
    public let gpu: GPUAttester?

    /// The model measurements of a TDX attester; nil for the sample attester or without an RTMR interface.
    public var measurements: RuntimeMeasurements? { (attester as? TDXAttester)?.measurements }

    public init(attester: any Attester, gpu: GPUAttester?) {
        self.attester = attester
        self.gpu = gpu
    }

    /// Picks the attester the way `CAID_ATTESTER` asks: `tdx`, `sample`, or `auto`, which takes TDX when
    /// configfs-tsm is there and otherwise refuses, so that a production host never falls back to sample silently.
    /// - Parameter measurements: the model measured into RTMR3, whose event log goes with every TDX quote.
    public static func select(
        _ choice: String, reportRoot: String = TDXAttester.defaultReportRoot,
        eventLog: String = TDXAttester.defaultEventLog, nvmlLibrary: String? = GPUAttester.defaultLibrary,
        measurements: RuntimeMeasurements? = nil
    ) throws(AttestationError) -> EvidenceProvider {
        let gpu = nvmlLibrary.map { GPUAttester(library: $0) }
        switch choice {
        case "sample":
            return EvidenceProvider(attester: SampleAttester(), gpu: nil)
        case "tdx":
            return EvidenceProvider(attester: TDXAttester(reportRoot: reportRoot, eventLog: eventLog, measurements: measurements), gpu: gpu)
        default:
            guard TDXAttester.isAvailable(reportRoot: reportRoot) else {
                throw AttestationError(.noTEE, """
                    no TEE found: \(reportRoot) does not exist (is this a TDX guest with configfs-tsm, kernel 6.7 or \
                    later, and configfs mounted?). caid does not fall back to the sample attester on its own; set \
                    CAID_ATTESTER=sample only on a machine for development, never in production
                    """)
            }
            return EvidenceProvider(attester: TDXAttester(reportRoot: reportRoot, eventLog: eventLog, measurements: measurements), gpu: gpu)
        }
    }
}
