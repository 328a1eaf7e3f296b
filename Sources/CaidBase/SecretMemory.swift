import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Memory for secret bytes: whole pages of their own, mapped privately and marked `MADV_DONTDUMP`, so that they
/// stay out of a core file even if one is written (a core_pattern helper run before caid turned dumps off, a
/// debugger's gcore). ``Secret`` allocates through here.
enum SecretMemory {
    static let pageSize = max(4096, Int(sysconf(Int32(_SC_PAGESIZE))))
    /// The regions that came from mmap (the rest from the heap fallback), so each is given back the way it came.
    private static let mapped = Mutex<Set<UInt>>([])

    /// `count` bytes, or an empty buffer for 0. Falls back to the heap if mmap fails (memory pressure): the bytes
    /// are then still wiped on release, only not excluded from a dump.
    static func allocate(_ count: Int) -> UnsafeMutableRawBufferPointer {
        guard count > 0 else { return UnsafeMutableRawBufferPointer(start: nil, count: 0) }
        #if os(Linux)
        let length = roundedUp(count)
        if let address = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), address != MAP_FAILED {
            _ = madvise(address, length, MADV_DONTDUMP)
            _ = mapped.withLock { $0.insert(UInt(bitPattern: address)) }
            return UnsafeMutableRawBufferPointer(start: address, count: count)
        }
        #endif
        return UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 16)
    }

    /// Gives back what ``allocate(_:)`` returned (the caller has wiped it).
    static func release(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        #if os(Linux)
        if mapped.withLock({ $0.remove(UInt(bitPattern: base)) }) != nil {
            munmap(base, roundedUp(buffer.count))
            return
        }
        #endif
        buffer.deallocate()
    }

    /// Whether `buffer` lies in pages excluded from core dumps (for tests).
    static func isExcludedFromDumps(_ buffer: UnsafeRawBufferPointer) -> Bool {
        guard let base = buffer.baseAddress else { return false }
        return mapped.withLock { $0.contains(UInt(bitPattern: base)) }
    }

    private static func roundedUp(_ count: Int) -> Int { (count + pageSize - 1) / pageSize * pageSize }
}
