/// The two incompatible dialects of the KBS attestation protocol (RCAR) that deployed Trustees speak.
public enum KBSDialect: String, Sendable, CaseIterable, CustomStringConvertible {
    /// openanolis Trustee up to 1.5.2 (and helm chart 1.0.0): `extra-params` a string, RSA1_5 key, evidence as
    /// a string, sorted-compact JSON binding, non-standard JWE.
    case legacy = "0.1.0"
    /// Upstream Trustee ≥ 0.14 and openanolis ≥ 1.6: runtime data in the attestation, composite evidence, JCS
    /// binding, RFC 7516 JWE.
    case current = "0.4.0"

    public var description: String { rawValue }
}
