/// The firmware's CC event log (ACPI CCEL) cut the way the attestation agent cuts it before sending.
///
/// The CCEL table is a fixed-size area: the events, a terminator, then padding. Trustiflux (v1.4.4 and later) and
/// the Confidential Containers attester (v0.15.0 and later) send only the events, followed by an 8-byte end flag
/// (inclavare-containers/guest-components and confidential-containers/guest-components
/// `attestation-agent/attester/src/utils.rs` `trim_ccel` and `read_eventlog`, v1.6.0 / v0.16.0). Sending the padding
/// makes the evidence tens of kilobytes larger and gives verifiers bytes they were not written for.
public enum CCEventLog {
    /// What ends the events: a record whose PCR index and event type are all ones, or all zeros.
    static let endFlag = [UInt8](repeating: 0xFF, count: 8)

    /// The events of `ccel` up to its terminator, followed by the end flag.
    /// - Throws: when a digest algorithm is unknown or the log has no terminator, naming where.
    public static func trim(_ ccel: [UInt8]) throws(AttestationError) -> [UInt8] {
        var reader = Reader(bytes: ccel)
        // The first event is TCG_PCClientPCREvent in the SHA-1 format: PCR index, type, a 20-byte digest, and
        // (for EV_NO_ACTION, the spec ID event) its data.
        try reader.skip(4)
        let firstType = try reader.uint32()
        try reader.skip(20)
        if firstType == 0x3 { try reader.skip(Int(try reader.uint32())) }
        // Then TCG_PCR_EVENT2 records until the terminator.
        while true {
            let start = reader.offset
            let flag = try reader.uint64()
            if flag == UInt64.max || flag == 0 { return Array(ccel[..<start]) + endFlag }
            let count = try reader.uint32()
            guard count <= 16 else { throw AttestationError(.tee, "the CC event log has an event with \(count) digests at byte \(start); it is damaged") }
            for _ in 0..<count {
                let algorithm = try reader.uint16()
                switch algorithm {
                case 0x0B, 0x12: try reader.skip(32)  // SHA-256, SM3
                case 0x0C: try reader.skip(48)  // SHA-384
                case 0x0D: try reader.skip(64)  // SHA-512
                default:
                    throw AttestationError(.tee, "the CC event log uses digest algorithm 0x\(String(algorithm, radix: 16)) at byte \(start), which the attestation agent does not know either")
                }
            }
            try reader.skip(Int(try reader.uint32()))
        }
    }

    /// Little-endian fields, every read checked against the end.
    private struct Reader {
        let bytes: [UInt8]
        var offset = 0

        mutating func skip(_ count: Int) throws(AttestationError) {
            guard count >= 0, count <= bytes.count - offset else {
                throw AttestationError(.tee, "the CC event log ends without its end flag (at byte \(offset) of \(bytes.count)); it is damaged")
            }
            offset += count
        }

        mutating func uint16() throws(AttestationError) -> UInt16 { UInt16(truncatingIfNeeded: try little(2)) }
        mutating func uint32() throws(AttestationError) -> UInt32 { UInt32(truncatingIfNeeded: try little(4)) }
        mutating func uint64() throws(AttestationError) -> UInt64 { try little(8) }

        private mutating func little(_ size: Int) throws(AttestationError) -> UInt64 {
            let start = offset
            try skip(size)
            var value: UInt64 = 0
            for index in (start..<offset).reversed() { value = value << 8 | UInt64(bytes[index]) }
            return value
        }
    }
}
