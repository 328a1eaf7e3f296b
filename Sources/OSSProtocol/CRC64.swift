import CCRC64

/// CRC-64/XZ (ECMA-182 polynomial, reflected, initial and final value all ones): the checksum OSS reports in
/// `x-oss-hash-crc64ecma`. Parts computed in parallel are joined with ``combine(_:_:length:)``.
///
/// Runs of 64 bytes or more are folded with carry-less multiplication where the CPU has it (the `CCRC64` shim;
/// a profile of `caid fetch` had the table code at a quarter of the client's CPU), the rest by slicing-by-8.
public struct CRC64: Sendable, Equatable {
    /// Whether this CPU can fold (PCLMULQDQ); false makes every update take the table code.
    static let folds = caid_crc64_fold_supported() != 0

    /// The reflected ECMA-182 polynomial.
    static let polynomial: UInt64 = 0xC96C_5795_D787_0F42

    /// Eight tables for slicing-by-8: eight bytes per step instead of one.
    static let tables: [[UInt64]] = {
        var tables = [[UInt64]](repeating: [UInt64](repeating: 0, count: 256), count: 8)
        for byte in 0..<256 {
            var crc = UInt64(byte)
            for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ polynomial : crc >> 1 }
            tables[0][byte] = crc
        }
        for byte in 0..<256 {
            var crc = tables[0][byte]
            for slice in 1..<8 {
                crc = tables[0][Int(crc & 0xFF)] ^ (crc >> 8)
                tables[slice][byte] = crc
            }
        }
        return tables
    }()

    /// The checksum of everything fed so far.
    public private(set) var value: UInt64

    /// A checksum continuing from `value` (0 for an empty input).
    public init(value: UInt64 = 0) {
        self.value = value
    }

    /// Feeds more bytes.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        update(bytes, folding: Self.folds)
    }

    /// Feeds more bytes, folding runs of 64 or more bytes when `folding` (tests compare both ways).
    mutating func update(_ bytes: UnsafeRawBufferPointer, folding: Bool) {
        let blocks = bytes.count / 16
        guard folding, blocks >= 4, let base = bytes.baseAddress else {
            value = ~Self.table(~value, bytes)
            return
        }
        // Every whole 16-byte block is folded into 16 bytes of state; the table code takes those and the 0–15 left.
        var state = (UInt64(0), UInt64(0))
        withUnsafeMutableBytes(of: &state) { out in
            caid_crc64_fold(~value, base.assumingMemoryBound(to: UInt8.self), blocks, out.baseAddress?.assumingMemoryBound(to: UInt8.self))
        }
        let register = withUnsafeBytes(of: state) { Self.table(0, $0) }
        value = ~Self.table(register, UnsafeRawBufferPointer(rebasing: bytes[(blocks * 16)...]))
    }

    /// The table code: the register (not inverted) after `bytes`, from `register`.
    private static func table(_ register: UInt64, _ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var crc = register
        var index = 0
        let count = bytes.count
        Self.tables.withUnsafeBufferPointer { tables in
            let t0 = tables[0], t1 = tables[1], t2 = tables[2], t3 = tables[3]
            let t4 = tables[4], t5 = tables[5], t6 = tables[6], t7 = tables[7]
            while index + 8 <= count {
                let word = crc ^ bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self).littleEndian
                crc = t7[Int(word & 0xFF)] ^ t6[Int(word >> 8 & 0xFF)] ^ t5[Int(word >> 16 & 0xFF)]
                    ^ t4[Int(word >> 24 & 0xFF)] ^ t3[Int(word >> 32 & 0xFF)] ^ t2[Int(word >> 40 & 0xFF)]
                    ^ t1[Int(word >> 48 & 0xFF)] ^ t0[Int(word >> 56)]
                index += 8
            }
            while index < count {
                crc = t0[Int((crc ^ UInt64(bytes[index])) & 0xFF)] ^ (crc >> 8)
                index += 1
            }
        }
        return crc
    }

    /// Feeds more bytes.
    public mutating func update(_ bytes: some Sequence<UInt8>) {
        let array = Array(bytes)
        array.withUnsafeBytes { update($0) }
    }

    /// The CRC of A followed by B, from the CRCs of A and B and B's length (zlib's method, in GF(2) for 64 bits).
    public static func combine(_ first: UInt64, _ second: UInt64, length: UInt64) -> UInt64 {
        guard length > 0 else { return first }
        // The operator for one zero bit, then squared repeatedly to apply `length` zero bytes to `first`.
        var odd = [UInt64](repeating: 0, count: 64)
        odd[0] = polynomial
        var row: UInt64 = 1
        for index in 1..<64 {
            odd[index] = row
            row <<= 1
        }
        var even = square(odd)   // two zero bits
        odd = square(even)       // four zero bits
        var crc = first
        var remaining = length
        repeat {
            even = square(odd)   // first pass: one zero byte
            if remaining & 1 == 1 { crc = times(even, crc) }
            remaining >>= 1
            guard remaining > 0 else { break }
            odd = square(even)
            if remaining & 1 == 1 { crc = times(odd, crc) }
            remaining >>= 1
        } while remaining > 0
        return crc ^ second
    }

    private static func times(_ matrix: [UInt64], _ vector: UInt64) -> UInt64 {
        var sum: UInt64 = 0
        var vector = vector
        var index = 0
        while vector != 0 {
            if vector & 1 == 1 { sum ^= matrix[index] }
            vector >>= 1
            index += 1
        }
        return sum
    }

    private static func square(_ matrix: [UInt64]) -> [UInt64] {
        (0..<64).map { times(matrix, matrix[$0]) }
    }
}
