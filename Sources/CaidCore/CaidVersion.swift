/// caid's release, printed by `caid --version` and sent as the KBS client's User-Agent.
public enum CaidVersion {
    public static let current = "0.4.0"
}
