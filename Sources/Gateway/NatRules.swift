import Foundation

/// The nat rules of `netfilter` mode, as TNG's egress installs them: remote TCP traffic to the service port is
/// redirected to the gateway's listener; connections caid marks itself (its upstream side) are left alone.
///
/// One chain of caid's own, hooked from PREROUTING (traffic from other hosts) and OUTPUT, so that removing caid's
/// rules never touches anyone else's, and a start after a killed caid first clears what it left.
public struct NatRules: Sendable {
    public static let chain = "CAID_GATEWAY"
    /// The socket mark of caid's upstream connections (TNG uses the same value).
    public static let mark: UInt32 = 565

    public let servicePort: UInt16
    public let listenPort: UInt16
    public let iptables: String

    public init(servicePort: UInt16, listenPort: UInt16, iptables: String = "iptables") {
        self.servicePort = servicePort
        self.listenPort = listenPort
        self.iptables = iptables
    }

    /// The rule lines, for the log and for operators who want to see them.
    public var rules: [[String]] {
        [
            ["-t", "nat", "-N", Self.chain],
            ["-t", "nat", "-A", Self.chain, "-m", "mark", "--mark", String(Self.mark), "-j", "RETURN"],
            ["-t", "nat", "-A", Self.chain, "-p", "tcp", "--dport", String(servicePort), "-m", "addrtype", "!", "--src-type", "LOCAL",
             "--dst-type", "LOCAL", "-j", "REDIRECT", "--to-ports", String(listenPort)],
            ["-t", "nat", "-I", "PREROUTING", "-p", "tcp", "-j", Self.chain],
            ["-t", "nat", "-I", "OUTPUT", "-p", "tcp", "-j", Self.chain],
        ]
    }

    /// `-C` lines for every rule: the nat rules are whole when each succeeds.
    public var checks: [[String]] {
        rules.compactMap { rule in
            guard let verb = rule.firstIndex(where: { $0 == "-A" || $0 == "-I" }) else { return nil }
            var check = rule
            check[verb] = "-C"
            return check
        }
    }

    /// Whether every rule is in place (a firewall reload may have flushed the nat table).
    public func isComplete() -> Bool {
        checks.allSatisfy { run($0).status == 0 }
    }

    /// Installs the rules, after clearing any left by an earlier caid.
    public func install() throws(NatError) {
        remove()
        for rule in rules {
            let result = run(rule)
            guard result.status == 0 else {
                remove()
                throw NatError("\(iptables) \(rule.joined(separator: " ")) failed: \(result.output.trimmingCharacters(in: .whitespacesAndNewlines)); netfilter mode needs root (CAP_NET_ADMIN) and iptables")
            }
        }
    }

    /// Removes caid's chain and the jumps to it; what is not there is skipped.
    public func remove() {
        if IPTables(iptables).removeChains(table: "nat", [Self.chain]) { return }
        for hook in ["PREROUTING", "OUTPUT"] {
            var removed = 0
            while removed < 16, run(["-t", "nat", "-D", hook, "-p", "tcp", "-j", Self.chain]).status == 0 { removed += 1 }
        }
        _ = run(["-t", "nat", "-F", Self.chain])
        _ = run(["-t", "nat", "-X", Self.chain])
    }

    private func run(_ arguments: [String]) -> (status: Int32, output: String) {
        IPTables(iptables).run(arguments)
    }
}

/// Why the nat rules could not be installed.
public struct NatError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}
