import CSystemd

/// Keeps caid's memory out of core files: the model password, the gocryptfs master key, the OSS secret and the TEE
/// keys live in this process, and a trap (or a SIGSEGV/SIGABRT someone sends) would otherwise write them to disk
/// wherever `core_pattern` points, for anyone who can read that.
public enum ProcessHardening {
    /// What ``disableCoreDumps()`` managed, for the log.
    public struct Outcome: Sendable, Equatable {
        /// `RLIMIT_CORE` is 0 (soft and hard): the kernel writes no core file for this process or its children.
        public var coreLimitZero: Bool
        /// `PR_SET_DUMPABLE` is 0: no core (even to a `|` core_pattern helper such as systemd-coredump) and no
        /// ptrace attach or /proc/<pid>/mem reads by other processes of the same user.
        public var notDumpable: Bool
    }

    /// Turns core dumps off for this process; called first thing at start by every caid command.
    @discardableResult
    public static func disableCoreDumps() -> Outcome {
        // Lowering both limits never needs privilege; a later raise needs CAP_SYS_RESOURCE. A `|` core_pattern
        // (systemd-coredump) is not bound by RLIMIT_CORE=0 on every kernel; dumpable=0 stops it too.
        var limited: Int32 = 0
        var undumpable: Int32 = 0
        caid_disable_core_dumps(&limited, &undumpable)
        return Outcome(coreLimitZero: limited == 1, notDumpable: undumpable == 1)
    }
}
