/// The two places GPU evidence can travel to Trustee in the 0.4.0 protocol. Both Trustee generations speak 0.4.0,
/// so the protocol version cannot tell which one a server verifies.
public enum GPUEvidenceForm: String, Sendable, CustomStringConvertible {
    /// `{"nvidia": {"device_evidence_list": […]}}` as the attestation's additional evidence, for the `nvidia`
    /// verifier of confidential-containers/trustee (v0.15.0 and later). openanolis/trustee has none: v1.6.0–v1.8.x
    /// panic on it (`Tee::Nvidia => todo!()`, `deps/verifier/src/lib.rs`), v1.9.0 answers "not implemented".
    case device
    /// `gpu_evidence` inside the TDX evidence with empty additional evidence, which openanolis/trustee's TDX
    /// verifier checks (`deps/verifier/src/tdx/mod.rs`, v1.5.2–v1.9.0) and Trustiflux v1.4–v1.6 sends.
    case embedded

    public var description: String { rawValue }
}
