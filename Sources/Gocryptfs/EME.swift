import Crypto
import _CryptoExtras

/// EME (ECB-Mix-ECB, Halevi and Rogaway), the wide-block mode gocryptfs encrypts names with: AES-256, a 16-byte
/// tweak (the directory IV), inputs of 1 to 128 blocks of 16 bytes. Written from the published construction;
/// checked against names the real gocryptfs made.
struct EME {
    enum Direction {
        case encrypt, decrypt
    }

    let key: SymmetricKey

    func transform(_ input: [UInt8], tweak: [UInt8], _ direction: Direction) throws -> [UInt8] {
        guard tweak.count == 16, input.count % 16 == 0, !input.isEmpty, input.count <= 16 * 128 else {
            throw GocryptfsError(.corruptName, "EME input of \(input.count) bytes is not 1 to 128 blocks of 16")
        }
        let blocks = input.count / 16
        // L = 2·AES(K, 0), then the table of 2^j·L. The key is always used forwards here.
        var l = [UInt8](repeating: 0, count: 16)
        try AES.permute(&l, key: key)
        var table: [[UInt8]] = []
        for _ in 0..<blocks {
            l = Self.double(l)
            table.append(l)
        }
        var out = [UInt8](repeating: 0, count: input.count)
        for j in 0..<blocks {
            var block = Self.xor(Array(input[j * 16..<(j + 1) * 16]), table[j])
            try aes(&block, direction)
            out.replaceSubrange(j * 16..<(j + 1) * 16, with: block)
        }
        var mp = Self.xor(Array(out[0..<16]), tweak)
        for j in 1..<blocks { mp = Self.xor(mp, Array(out[j * 16..<(j + 1) * 16])) }
        var mc = mp
        try aes(&mc, direction)
        var m = Self.xor(mp, mc)
        for j in 1..<blocks {
            m = Self.double(m)
            let ccc = Self.xor(Array(out[j * 16..<(j + 1) * 16]), m)
            out.replaceSubrange(j * 16..<(j + 1) * 16, with: ccc)
        }
        var ccc1 = Self.xor(mc, tweak)
        for j in 1..<blocks { ccc1 = Self.xor(ccc1, Array(out[j * 16..<(j + 1) * 16])) }
        out.replaceSubrange(0..<16, with: ccc1)
        for j in 0..<blocks {
            var block = Array(out[j * 16..<(j + 1) * 16])
            try aes(&block, direction)
            out.replaceSubrange(j * 16..<(j + 1) * 16, with: Self.xor(block, table[j]))
        }
        return out
    }

    private func aes(_ block: inout [UInt8], _ direction: Direction) throws {
        switch direction {
        case .encrypt: try AES.permute(&block, key: key)
        case .decrypt: try AES.inversePermute(&block, key: key)
        }
    }

    /// Multiplication by 2 in GF(2^128), little-endian: byte 0 is least significant, the carry folds in 0x87.
    static func double(_ input: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 16)
        out[0] = input[0] << 1
        if input[15] >= 0x80 { out[0] ^= 0x87 }
        for j in 1..<16 {
            out[j] = input[j] << 1 | input[j - 1] >> 7
        }
        return out
    }

    static func xor(_ a: [UInt8], _ b: [UInt8]) -> [UInt8] {
        zip(a, b).map { $0 ^ $1 }
    }
}
