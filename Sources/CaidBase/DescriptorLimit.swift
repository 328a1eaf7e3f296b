#if canImport(Glibc)
import Glibc
#endif

/// `RLIMIT_NOFILE`, the descriptors this process may hold: the gateway sizes its stream budget from it.
public enum DescriptorLimit {
    // Glibc imports RLIMIT_NOFILE as an enum case; the functions take its raw value.
    private static let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)

    /// The soft limit now.
    public static var current: Int {
        var limit = rlimit()
        guard getrlimit(Self.resource, &limit) == 0 else { return 1024 }
        return Int(clamping: limit.rlim_cur)
    }

    /// Raises the soft limit to the hard one, as Go programs do at start since Go 1.19: the soft 1024 exists for
    /// `select(2)`, which caid does not use, and the unit's `LimitNOFILE=` sets the hard limit an operator chose.
    /// - Returns: the soft limit afterwards.
    @discardableResult
    public static func raiseToHard() -> Int {
        var limit = rlimit()
        if getrlimit(Self.resource, &limit) == 0, limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(Self.resource, &limit)
        }
        return current
    }
}
