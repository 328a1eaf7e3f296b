import Attestation
import Foundation
import Testing

/// Where a verified token says which model the TEE measured, in each token shape Trustee issues.
@Suite struct ModelClaimTests {
    static func event(_ digest: String, domain: String = "caid", operation: String = "load-model") -> JSONValue {
        ["type_name": "EV_EVENT_TAG", "details": ["unicode_name": "AAEL", "data": ["domain": .string(domain), "operation": .string(operation), "content": ["digest": .string(digest)]]]]
    }

    @Test func theLastCaidEventCountsInSimpleEARAndTextShapes() throws {
        let events: JSONValue = .array([Self.event("sha256:old"), Self.event("sha256:other", domain: "trustiflux.alibaba.com", operation: "pai/load-model"), Self.event("sha256:new")])
        // Simple token: tcb-status is a JSON string of the flattened claims.
        let flattened = String(decoding: try JSONEncoder().encode(JSONValue.object(["tdx.uefi_event_logs": events])), as: UTF8.self)
        #expect(ModelClaim.digest(in: ["tcb-status": .string(flattened)]) == "sha256:new")
        // EAR token: unflattened, under the submodule's annotated evidence.
        let ear: [String: JSONValue] = ["submods": ["cpu0": ["ear.veraison.annotated-evidence": ["tdx": ["uefi_event_logs": events]]]]]
        #expect(ModelClaim.digest(in: ear) == "sha256:new")
        // openanolis <= 1.6.0: the text log's contents, as strings.
        let text = String(decoding: try JSONEncoder().encode(JSONValue.object(["tdx.aael.caid/load-model": .array([.string(#"{"digest":"sha256:a"}"#), .string(#"{"digest":"sha256:b"}"#)])])), as: UTF8.self)
        #expect(ModelClaim.digest(in: ["tcb-status": .string(text)]) == "sha256:b")
        #expect(ModelClaim.digest(in: ["tcb-status": "{}"]) == nil)
        #expect(ModelClaim.digest(in: [:]) == nil)
    }
}
