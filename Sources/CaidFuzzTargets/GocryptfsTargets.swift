import Crypto
import Gocryptfs

/// Fixed keys, so that the seeds made by ``FuzzSeeds`` authenticate and the fuzzer reaches past the tag checks.
enum FuzzKeys {
    static let master = SymmetricKey(data: [UInt8](repeating: 0x5A, count: 32))
    static let volume = VolumeKeys(masterKey: master)
    static let content = ContentCipher(key: volume.contentKey)
    static let fileIDWhenHeaderIsBad = [UInt8](repeating: 0xA5, count: 16)

    static func config(features: String) -> VolumeConfig? {
        let text = """
            {"Creator":"caid-fuzz","EncryptedKey":"4gGdcVL9T97IeRaToc+vZ9iqbA4cXBvkXQg0dTkpMiwQGhWKdm9CoLdE/VS4mMXi421GWD6HGw0kkFg1r5c1CA==",\
            "ScryptObject":{"Salt":"VuDO/OSekgASTYXBSJLtmgpN0VWXVjUnInAeFUYbrAw=","N":65536,"R":8,"P":1,"KeyLen":32},\
            "Version":2,"FeatureFlags":[\(features)]}
            """
        return try? VolumeConfig.parse(Array(text.utf8))
    }

    /// Names as most volumes have them (per-directory IV, EME, long names, unpadded base64) and as older ones do
    /// (deterministic, padded base64).
    static let modernNames = config(features: #""HKDF","GCMIV128","DirIV","EMENames","LongNames","Raw64""#).map { NameCipher(config: $0, keys: volume) }
    static let olderNames = config(features: #""HKDF","GCMIV128","EMENames""#).map { NameCipher(config: $0, keys: volume) }

    /// Whether both name ciphers could be made (the smoke test checks it, so the names target cannot go idle).
    static var ready: Bool { modernNames != nil && olderNames != nil }
}

extension FuzzTarget {
    /// gocryptfs.conf as read from the (untrusted) object store.
    static let gocryptfsConf = FuzzTarget(name: "gocryptfs-conf", maxLength: 4096) { bytes in
        guard let config = try? VolumeConfig.parse(Array(bytes)) else { return }
        _ = try? VolumeConfig.parse(config.serialized())
    }

    /// A file's content as the mount reads it: the 18-byte header, then ciphertext blocks (the last one short).
    static let contentBlocks = FuzzTarget(name: "content", maxLength: 18 + 2 * ContentCipher.cipherBlockSize + 64) { bytes in
        let headerEnd = min(bytes.count, ContentCipher.headerSize)
        let fileID = (try? ContentCipher.fileID(fromHeader: bytes[0..<headerEnd])) ?? FuzzKeys.fileIDWhenHeaderIsBad
        _ = ContentCipher.plainSize(cipherSize: UInt64(bytes.count))
        var offset = headerEnd
        var number: UInt64 = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + ContentCipher.cipherBlockSize)
            let block = UnsafeRawBufferPointer(rebasing: bytes[offset..<end])
            _ = try? FuzzKeys.content.decryptBlock(block, number: number, fileID: fileID, holes: .zeros)
            _ = try? FuzzKeys.content.decryptBlock(block, number: number, fileID: fileID, holes: .refuse)
            offset = end
            number += 1
        }
    }

    /// Directory entries: the first 16 bytes are the directory's IV (`gocryptfs.diriv`), the rest an entry name,
    /// or a long name's entry and `.name` content separated by a newline; also a symlink target.
    static let names = FuzzTarget(name: "names", maxLength: 1024) { bytes in
        let ivEnd = min(bytes.count, NameCipher.dirIVSize)
        let iv = Array(bytes[0..<ivEnd])
        let ivValid = (try? NameCipher.validateDirIV(iv)) != nil
        let text = String(decoding: bytes[ivEnd...], as: UTF8.self)
        for cipher in [FuzzKeys.modernNames, FuzzKeys.olderNames].compactMap({ $0 }) {
            let directoryIV = cipher.mode == .perDirectoryIV ? (ivValid ? iv : NameCipher.zeroIV) : NameCipher.zeroIV
            if cipher.isLongNameEntry(text) || text.contains("\n") {
                let parts = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false)
                if parts.count == 2, (try? NameCipher.verifyLongName(entry: String(parts[0]), content: String(parts[1]))) != nil {
                    _ = try? cipher.decrypt(String(parts[1]), iv: directoryIV)
                }
            } else if !cipher.isInternal(text) {
                _ = try? cipher.decrypt(text, iv: directoryIV)
            }
        }
        _ = try? FuzzKeys.content.decryptSymlinkTarget(text)
    }
}
