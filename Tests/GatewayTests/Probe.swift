import RATLS
import SwiftASN1
import X509

/// Reads the evidence extension out of a DER certificate with swift-certificates' parser.
enum RATLSEvidenceProbe {
    static func extensionValue(in der: [UInt8]) -> [UInt8]? {
        guard let certificate = try? Certificate(derEncoded: der) else { return nil }
        return certificate.extensions.first { $0.oid == AttestedCertificate.evidenceOID }.map { Array($0.value) }
    }
}
