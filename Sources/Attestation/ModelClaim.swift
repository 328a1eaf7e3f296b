import Foundation

/// The model digest a verified token says this TEE measured: the last `caid load-model` event among the claims
/// Trustee's verifier built from the replayed event log. Pure.
///
/// Where the claims are (openanolis/trustee `attestation-service/src/token/simple.rs`, v1.5.2 to v1.9.0): the
/// Simple token's `tcb-status` is a JSON *string* of the flattened claims, keys prefixed with the TEE (`tdx.`),
/// objects joined with dots, arrays kept whole. From the TCG2 log the events are `tdx.uefi_event_logs` entries
/// (`details.data.{domain, operation, content}`, the content parsed as JSON); from the text log (openanolis <= 1.6.0)
/// `tdx.aael` gives `"domain/operation": [contents]`, flattened to `tdx.aael.caid/load-model`. EAR tokens carry the
/// same claims unflattened under `submods.<tee>."ear.veraison.annotated-evidence".tdx` (openanolis/trustee
/// `attestation-service/src/token/ear_broker.rs` @ v1.7.8).
public enum ModelClaim {
    /// The digest (`sha256:…`) of the last caid model event in `claims`, or nil when they hold none.
    public static func digest(in claims: [String: JSONValue]) -> String? {
        var status = claims["tcb-status"]
        if let text = status?.stringValue, let parsed = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)) {
            status = parsed
        }
        let annotated = (claims["submods"].flatMap { submods -> [JSONValue]? in
            guard case .object(let members) = submods else { return nil }
            return members.keys.sorted().compactMap { members[$0]?["ear.veraison.annotated-evidence"] }
        }) ?? []
        for scope in ([status, .object(claims)] + annotated).compactMap({ $0 }) {
            if let found = digest(inScope: scope) { return found }
        }
        return nil
    }

    private static func digest(inScope scope: JSONValue) -> String? {
        let events = scope["tdx.uefi_event_logs"] ?? scope["tdx"]?["uefi_event_logs"]
        if let entries = events?.arrayValue {
            let model = entries.last { entry in
                let data = entry["details"]?["data"]
                return data?["domain"]?.stringValue == "caid" && data?["operation"]?.stringValue == "load-model"
            }
            if let content = model?["details"]?["data"]?["content"] { return digest(ofContent: content) }
        }
        let text = scope["tdx.aael.caid/load-model"] ?? scope["tdx"]?["aael"]?["caid/load-model"]
        if let last = text?.arrayValue?.last { return digest(ofContent: last) }
        return nil
    }

    /// `{"digest": …}`, as an object or as the JSON text of one.
    private static func digest(ofContent content: JSONValue) -> String? {
        if let digest = content["digest"]?.stringValue { return digest }
        guard let text = content.stringValue, let parsed = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)) else { return nil }
        return parsed["digest"]?.stringValue
    }
}
