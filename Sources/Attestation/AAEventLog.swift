import Crypto

/// One runtime event of the attestation agent's event log (AAEL): `domain operation content`, the form Trustee's
/// verifiers parse (confidential-containers/guest-components `attestation-agent/attestation-agent/src/eventlog/mod.rs`
/// @ v0.21.0, inclavare-containers/guest-components @ v1.6.0). No field may hold a newline; domain and operation no
/// space; the content no space either where openanolis Trustee <= 1.6.0 reads the text form (exactly three fields).
public struct AAEvent: Sendable, Equatable, Codable {
    public var domain: String
    public var operation: String
    public var content: String

    public init(domain: String, operation: String, content: String) {
        self.domain = domain
        self.operation = operation
        self.content = content
    }

    public var text: String { "\(domain) \(operation) \(content)" }

    /// caid's own event for the model it serves: `caid load-model {"digest":"sha256:…"}`.
    public static func caidModel(digest: String) -> AAEvent {
        AAEvent(domain: "caid", operation: "load-model", content: #"{"digest":""# + digest + #""}"#)
    }

    /// The same model in the shape openanolis Trustee's `policy/pai_default.rego` (v1.8.1 and later) reads:
    /// domain `trustiflux.alibaba.com`, operation `pai/load-model`, content `{"hash","model-id"}`.
    public static func paiModel(digest: String, modelID: String) -> AAEvent {
        AAEvent(domain: "trustiflux.alibaba.com", operation: "pai/load-model", content: #"{"hash":""# + digest + #"","model-id":""# + modelID + #""}"#)
    }
}

/// The two forms of the AA event log, chosen by the Trustee that verifies it (`CAID_EVENTLOG_FORM`).
public enum EventLogForm: String, Sendable, Codable, CaseIterable {
    /// TCG2 records appended to `cc_eventlog`: upstream Trustee, openanolis >= 1.6.2, Trustiflux >= 1.4.4.
    case tcg2
    /// The text `aa_eventlog` with its INIT line: openanolis Trustee <= 1.6.0.
    case text
}

/// The runtime events caid extended RTMR3 with since boot, and how a verifier replays them. Pure.
///
/// Replay (both verifiers): `m = SHA384(m ‖ digest)` per event in order. TCG2 starts from 48 zero bytes and an
/// event's digest is SHA-384 of its TCG_PCClientTaggedEvent (id 0x4141454C "AAEL", length, text), not of the text
/// alone (confidential-containers/trustee `deps/eventlog`, openanolis/trustee >= v1.6.2). The text form starts from
/// the INIT value (RTMR3 when the log began), extends SHA-384 of `INIT sha384/<lowercase hex>` first, then SHA-384
/// of each line without its newline (openanolis/trustee v1.6.0 `deps/verifier/src/eventlog/mod.rs`).
public struct AAEventLog: Sendable, Equatable, Codable {
    public var form: EventLogForm
    /// The text form's INIT value: RTMR3 before the log's first extend.
    public var initial: [UInt8]?
    public var events: [AAEvent]

    public init(form: EventLogForm, initial: [UInt8]? = nil, events: [AAEvent] = []) {
        self.form = form
        self.initial = initial
        self.events = events
    }

    public static let zero = [UInt8](repeating: 0, count: 48)
    /// The CC measurement register index of RTMR3 in TCG2 records (1-based: 1 is RTMR0).
    static let rtmr3Index: UInt32 = 4
    static let eventTag: UInt32 = 0x6
    static let aaelID: UInt32 = 0x4141_454C

    public var initLine: String { "INIT sha384/" + Self.hex(initial ?? Self.zero) }

    /// What RTMR3 was extended with, in order: for the text form the INIT line first.
    public var extensions: [[UInt8]] {
        switch form {
        case .tcg2: events.map(Self.tcg2Digest)
        case .text: [Self.sha384(Array(initLine.utf8))] + events.map { Self.sha384(Array($0.text.utf8)) }
        }
    }

    /// The extensions one new event adds.
    public func extensions(adding event: AAEvent) -> [UInt8] {
        form == .tcg2 ? Self.tcg2Digest(event) : Self.sha384(Array(event.text.utf8))
    }

    /// RTMR3 as a verifier computes it from this log.
    public func replay() -> [UInt8] {
        Self.replay(extensions, from: form == .text ? (initial ?? Self.zero) : Self.zero)
    }

    public static func replay(_ digests: [[UInt8]], from start: [UInt8]) -> [UInt8] {
        digests.reduce(start) { sha384($0 + $1) }
    }

    /// The TCG2 records of the events (TCG_PCR_EVENT2, little-endian): MR index 4, EV_EVENT_TAG, one SHA-384
    /// digest, then the tagged event.
    public var tcg2Records: [UInt8] {
        var out: [UInt8] = []
        for event in events {
            let tagged = Self.taggedEvent(event)
            out += le32(Self.rtmr3Index) + le32(Self.eventTag) + le32(1) + [0x0C, 0x00] + Self.sha384(tagged) + le32(UInt32(tagged.count)) + tagged
        }
        return out
    }

    /// The text form as `aa_eventlog` carries it: the INIT line, then a line per event, each ending in a newline.
    public var textLog: String {
        ([initLine] + events.map(\.text)).map { $0 + "\n" }.joined()
    }

    /// The last event of `domain operation`.
    public func last(domain: String, operation: String) -> AAEvent? {
        events.last { $0.domain == domain && $0.operation == operation }
    }

    /// The 69-byte header the Confidential Containers attester puts before AAEL records when the host has no CCEL
    /// (`EL_HEADER`, confidential-containers/guest-components `attestation-agent/attester/src/utils.rs` @ v0.21.0):
    /// a SHA-1-format EV_NO_ACTION event whose spec-ID data lists SHA-384 and SM3.
    public static let headerWithoutCCEL: [UInt8] = {
        let data = [UInt8](repeating: 0, count: 24) + le32(2) + [0x0C, 0x00, 48, 0x00] + [0x12, 0x00, 32, 0x00] + [0]
        return le32(0) + le32(3) + [UInt8](repeating: 0, count: 20) + le32(UInt32(data.count)) + data
    }()

    static func taggedEvent(_ event: AAEvent) -> [UInt8] {
        let text = Array(event.text.utf8)
        return le32(aaelID) + le32(UInt32(text.count)) + text
    }

    static func tcg2Digest(_ event: AAEvent) -> [UInt8] { sha384(taggedEvent(event)) }

    static func sha384(_ bytes: [UInt8]) -> [UInt8] { Array(SHA384.hash(data: bytes)) }

    /// Lowercase hex, as the text form's INIT line and health show registers.
    public static func hex(_ bytes: [UInt8]) -> String { Attestation.hex(bytes) }
}

private func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
