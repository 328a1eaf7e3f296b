#if canImport(Glibc)
import Glibc
#endif

/// Makes glibc overwrite the heap memory it frees, for the whole `caid run` process.
///
/// caid keeps its own secrets in wiped buffers, but the libraries it uses copy them into buffers of their own that
/// they free without wiping: the HTTP request head that carries the STS token (NIO), the scrypt output swift-crypto
/// returns as `Data`. Freed chunks keep their bytes until reused, and a core image or a read of the process's
/// memory finds them. `glibc.malloc.perturb` overwrites every chunk on `free`; chunks kept in glibc's per-thread
/// cache skip that overwrite, so `glibc.malloc.tcache_count=0` turns the cache off. Large chunks are returned to
/// the kernel with `munmap` and need neither. glibc reads tunables only when a program starts, so caid re-executes
/// itself once, before it reads cai.env, with the tunables added to `GLIBC_TUNABLES`
/// (glibc manual, "Memory Allocation Tunables"; both exist since glibc 2.26).
enum FreedMemoryWiping {
    /// The tunables, in `GLIBC_TUNABLES` syntax: 0xA5 as the fill byte (glibc fills freed chunks with it and new
    /// ones with its complement).
    static let tunables: [(name: String, value: String)] = [("glibc.malloc.perturb", "165"), ("glibc.malloc.tcache_count", "0")]

    /// Set in the re-executed process, so that it does not try again.
    static let marker = "CAID_WIPING_FREED_MEMORY"

    /// The `GLIBC_TUNABLES` value with caid's tunables in force, or nil when `current` has them already (the last
    /// setting of a name is the one glibc keeps).
    static func environmentValue(adding current: String?) -> String? {
        var last: [String: String] = [:]
        for item in (current ?? "").split(separator: ":") {
            let pair = item.split(separator: "=", maxSplits: 1)
            if pair.count == 2 { last[String(pair[0])] = String(pair[1]) }
        }
        guard tunables.contains(where: { last[$0.name] != $0.value }) else { return nil }
        let ours = tunables.map { "\($0.name)=\($0.value)" }.joined(separator: ":")
        guard let current, !current.isEmpty else { return ours }
        return current + ":" + ours
    }

    /// Re-executes this program with the tunables when they are not in force; returns when they are.
    /// - Returns: why the re-execution failed, when it did (caid then runs without the wiping).
    static func ensure() -> String? {
        guard let value = environmentValue(adding: getenv("GLIBC_TUNABLES").map { String(cString: $0) }) else { return nil }
        // Once only: where glibc drops the variable (a program started with raised privileges), a second attempt
        // would loop.
        guard getenv(marker) == nil else {
            return "glibc did not keep GLIBC_TUNABLES; copies of secrets that libraries free may stay in memory"
        }
        setenv(marker, "1", 1)
        setenv("GLIBC_TUNABLES", value, 1)
        let arguments = CommandLine.arguments.map { strdup($0) } + [nil]
        execv("/proc/self/exe", arguments)
        let reason = String(cString: strerror(errno))
        arguments.forEach { free($0) }
        return "cannot re-execute /proc/self/exe to wipe freed memory (\(reason)); copies of secrets that libraries free may stay in memory"
    }
}
