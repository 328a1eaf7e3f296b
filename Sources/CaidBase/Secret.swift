import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Bytes that must never reach a log, an error, a file or the health output: a model password, an OSS secret,
/// a session token, a private key.
///
/// The bytes live in pages of their own, excluded from core dumps (``SecretMemory``), overwritten with zeros when
/// the last reference goes away, or earlier through ``wipe()``. Every textual form of a `Secret` is `<redacted>`, so
/// interpolating one by mistake prints nothing of it.
public final class Secret: Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    private struct Storage: @unchecked Sendable {
        var buffer: UnsafeMutableRawBufferPointer
    }

    private let storage: Mutex<Storage>

    /// Copies `bytes` into secret storage. The caller should wipe its own copy.
    public init(_ bytes: some Collection<UInt8>) {
        let buffer = SecretMemory.allocate(bytes.count)
        _ = buffer.initializeMemory(as: UInt8.self, from: bytes)
        storage = Mutex(Storage(buffer: buffer))
    }

    deinit {
        storage.withLock { storage in
            Self.zero(storage.buffer)
            SecretMemory.release(storage.buffer)
        }
    }

    /// The number of bytes held (0 after ``wipe()``).
    public var count: Int { storage.withLock { $0.buffer.count } }

    /// `true` when the secret holds no bytes.
    public var isEmpty: Bool { count == 0 }

    /// Calls `body` with the secret bytes. Do not let them escape the closure.
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try storage.withLock { try body(UnsafeRawBufferPointer($0.buffer)) }
    }

    /// Overwrites the bytes with zeros now; the secret is empty afterwards.
    public func wipe() {
        storage.withLock { storage in
            Self.zero(storage.buffer)
            SecretMemory.release(storage.buffer)
            storage.buffer = SecretMemory.allocate(0)
        }
    }

    public var description: String { "<redacted>" }
    public var debugDescription: String { "Secret(<redacted>)" }

    /// Zeroes memory in a way the optimiser may not remove.
    public static func zero(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        explicit_bzero(base, buffer.count)
    }
}

/// Overwrites an array of bytes with zeros, for buffers that briefly held secret material.
public func wipeBytes(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { Secret.zero($0) }
}

/// Overwrites a `Data` with zeros, for the plaintexts that swift-crypto returns as `Data`.
public func wipeBytes(_ data: inout Data) {
    data.withUnsafeMutableBytes { Secret.zero($0) }
}
