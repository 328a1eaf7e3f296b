import KBSProtocol

/// A parser of untrusted bytes, wrapped for fuzzing: `run` hands the bytes to the product's own entry point and
/// ignores what it throws. A thrown, typed error is the correct answer to bad bytes; a trap (bounds, overflow,
/// force unwrap) or an address-sanitizer report is the bug the fuzzer looks for.
public struct FuzzTarget: Sendable {
    public let name: String
    /// Longest input worth trying (`-max_len`): a little above the largest real input of its kind.
    public let maxLength: Int
    public let run: @Sendable (UnsafeRawBufferPointer) -> Void

    public init(name: String, maxLength: Int, run: @escaping @Sendable (UnsafeRawBufferPointer) -> Void) {
        self.name = name
        self.maxLength = maxLength
        self.run = run
    }

    /// Every target, in the order scripts/fuzz.sh runs them.
    public static let all: [FuzzTarget] = [
        ossListing, ossError, modelManifest, cbor, ratlsEvidence, envFile, kbsJSON, jwe, asToken, gocryptfsConf, names, contentBlocks,
        proxyHead, ratlsCertificate, connectHeaders,
    ]

    public static func named(_ name: String) -> FuzzTarget? {
        all.first { $0.name == name }
    }

    /// Whether the fixed keys the targets decrypt with could be made (otherwise the names target would go idle).
    public static var keysReady: Bool { FuzzKeys.ready && FuzzTEEKeys.keys.count == TEEKey.Algorithm.allCases.count }

    public func run(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { run($0) }
    }
}
