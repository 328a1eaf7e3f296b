/// The TEE types caid attests as, spelled as the KBS protocol's `tee` field.
public enum TEEType: String, Sendable {
    case tdx
    /// Evidence without a TEE, for development and the demo: a Trustee that accepts it releases secrets to anyone.
    case sample
}

/// Produces the primary evidence of this host's TEE for a given report data.
public protocol Attester: Sendable {
    var tee: TEEType { get }

    /// Evidence binding `reportData` (at most 64 bytes; TDX pads it with zeros).
    /// - Parameter gpuEvidence: GPU evidence to carry inside the primary evidence (the legacy `gpu_evidence`
    ///   form); attesters that have no place for it ignore it.
    func evidence(reportData: [UInt8], gpuEvidence: JSONValue?) throws(AttestationError) -> JSONValue
}

/// The `sample` attester of the Confidential Containers stack: no hardware, report data in the clear.
/// Trustee's sample verifier compares `report_data` with the expected binding byte for byte.
public struct SampleAttester: Attester {
    public init() {}

    public var tee: TEEType { .sample }

    public func evidence(reportData: [UInt8], gpuEvidence: JSONValue?) -> JSONValue {
        ["svn": "1", "report_data": .string(Base64.standard(reportData))]
    }
}
