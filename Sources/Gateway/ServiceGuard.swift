import CaidBase
import Foundation
import Logging

/// The filter rules that keep the inference port (`MODEL_SERVICE_PORT`) closed to the network whatever the gateway
/// is doing: installed by `caid run` and `caid gateway` before attestation, kept through backoff, restarts and a
/// `kill -9` of caid, and removed only on a clean stop. Pure: the rule lines, the checks and the repair steps.
///
/// What it refuses, for IPv4 (iptables) and IPv6 (ip6tables):
/// - `INPUT`: TCP to the service port arriving on any interface but `lo`. Traffic the nat rules redirect to the
///   gateway reaches INPUT with the gateway's port as its destination (nat PREROUTING runs first), so it passes;
///   the gateway's own upstream connections and local health checks (vLLM's, the operator's) come over `lo`, even
///   when they dial the host's external address, so they pass too.
/// - `FORWARD`: connections a DNAT rewrote from the service port (a container publishing it, `docker -p`), which
///   never reach INPUT. Only the original destination port is matched, so containers' own outbound traffic to
///   some port 8080 elsewhere is left alone.
///
/// Each family has two chains of caid's own, jumped to from the top of INPUT and FORWARD, so that removing them
/// never touches anyone else's rules and a restarted caid finds and adopts them.
public struct ServiceGuardRules: Sendable, Equatable {
    public static let inputChain = "CAID_GUARD"
    public static let forwardChain = "CAID_GUARD_FWD"

    public enum Family: String, Sendable, CaseIterable {
        case ipv4, ipv6
        /// The command that edits this family's tables.
        public var command: String { self == .ipv4 ? "iptables" : "ip6tables" }
    }

    public let servicePort: UInt16
    public let family: Family

    public init(servicePort: UInt16, family: Family) {
        self.servicePort = servicePort
        self.family = family
    }

    /// The rules inside caid's chains, as (chain, rule arguments).
    public var rules: [(chain: String, rule: [String])] {
        let port = String(servicePort)
        // A reset rather than a silent drop: a client (or a test) learns at once that the port is closed.
        let refuse = ["-j", "REJECT", "--reject-with", "tcp-reset"]
        return [
            (Self.inputChain, ["!", "-i", "lo", "-p", "tcp", "--dport", port] + refuse),
            (Self.forwardChain, ["-p", "tcp", "-m", "conntrack", "--ctstate", "DNAT", "--ctorigdstport", port] + refuse),
        ]
    }

    /// The hooks and the chain each jumps to.
    public static let hooks: [(hook: String, chain: String)] = [("INPUT", inputChain), ("FORWARD", forwardChain)]

    /// `-C` lines: the guard is whole when every one succeeds.
    public var checks: [[String]] {
        rules.map { ["-C", $0.chain] + $0.rule } + Self.hooks.map { ["-C", $0.hook, "-j", $0.chain] }
    }

    /// One step of a repair: the arguments, and whether a failure is expected and harmless (the chain already
    /// exists).
    public struct Step: Sendable, Equatable {
        public var arguments: [String]
        public var mayFail: Bool
    }

    /// Makes the guard whole from any state: chains created if missing and refilled, then the jumps that are
    /// missing (`missingHooks`, from the checks) inserted at the top. Rules of the chains are rewritten only when a
    /// check failed, so an intact guard is never touched.
    public func repair(missingHooks: Set<String>) -> [Step] {
        var steps: [Step] = []
        for (_, chain) in Self.hooks {
            steps.append(Step(arguments: ["-N", chain], mayFail: true))
            steps.append(Step(arguments: ["-F", chain], mayFail: false))
        }
        for (chain, rule) in rules { steps.append(Step(arguments: ["-A", chain] + rule, mayFail: false)) }
        for (hook, chain) in Self.hooks where missingHooks.contains(hook) {
            steps.append(Step(arguments: ["-I", hook, "1", "-j", chain], mayFail: false))
        }
        return steps
    }

    /// What a clean stop runs: every jump to caid's chains (repeated until none is left), then the chains.
    public var removal: (jumps: [[String]], chains: [[String]]) {
        (Self.hooks.map { ["-D", $0.hook, "-j", $0.chain] }, Self.hooks.flatMap { [["-F", $0.chain], ["-X", $0.chain]] })
    }
}

/// Runs iptables or ip6tables (`-w`: waits for the xtables lock instead of failing when a firewall manager holds it).
public struct IPTables: Sendable {
    public let command: String

    public init(_ command: String) { self.command = command }

    public func run(_ arguments: [String]) -> (status: Int32, output: String) {
        Self.execute(command, ["-w", "5"] + arguments)
    }

    /// Removes `chains` from `table` and every rule that jumps to them, in one `-restore` transaction worked out
    /// from a `-save` listing (``ChainRemoval``): two processes where one per rule took seconds on a slow host.
    /// - Returns: whether it worked; `false` leaves the table as it was (no `-save`/`-restore` next to the tool, or
    ///   the table changed between the two), and the caller falls back to one command per rule.
    public func removeChains(table: String, _ chains: [String]) -> Bool {
        let listing = Self.execute(command + "-save", ["-t", table], stderr: false)
        guard listing.status == 0 else { return false }
        guard let script = ChainRemoval.script(table: table, chains: chains, listing: listing.output) else { return true }
        return Self.execute(command + "-restore", ["-w", "5", "--noflush"], input: script).status == 0
    }

    private static func execute(_ tool: String, _ arguments: [String], input: String? = nil, stderr: Bool = true) -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [tool] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = stderr ? pipe : FileHandle.nullDevice
        let stdin = Pipe()
        process.standardInput = input == nil ? FileHandle.nullDevice : stdin
        do { try process.run() } catch { return (127, "cannot run \(tool): \(error)") }
        if let input {
            // A restore script is a few hundred bytes: well under the pipe's buffer, so this cannot block.
            stdin.fileHandleForWriting.write(Data(input.utf8))
        }
        try? stdin.fileHandleForWriting.close()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }
}

/// Why the service port could not be closed to the network.
public struct ServiceGuardError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// The I/O side of ``ServiceGuardRules``: installs (or adopts) the guard for both families, checks it, restores
/// it when something flushed it, and removes it on a clean stop.
public struct ServiceGuard: Sendable {
    public enum State: Sendable, Equatable {
        /// Every rule was already there (a restarted caid adopting what the last one left, or a periodic check).
        case intact
        /// Some rules were missing and are back; the lines that were missing, for the log.
        case restored(missing: [String])
    }

    public let servicePort: UInt16
    private let families: [(rules: ServiceGuardRules, tool: IPTables)]

    public init(servicePort: UInt16, iptables: String = "iptables", ip6tables: String = "ip6tables") {
        self.servicePort = servicePort
        families = [
            (ServiceGuardRules(servicePort: servicePort, family: .ipv4), IPTables(iptables)),
            (ServiceGuardRules(servicePort: servicePort, family: .ipv6), IPTables(ip6tables)),
        ]
    }

    /// Makes the guard whole for both families, touching nothing that is already in place.
    /// - Returns: per family, whether it was intact or what had to be restored.
    public func ensure() throws(ServiceGuardError) -> [ServiceGuardRules.Family: State] {
        var states: [ServiceGuardRules.Family: State] = [:]
        for (rules, tool) in families {
            let missing = rules.checks.filter { tool.run($0).status != 0 }
            guard !missing.isEmpty else {
                states[rules.family] = .intact
                continue
            }
            let missingHooks = Set(missing.filter { ServiceGuardRules.hooks.map { $0.hook }.contains($0[1]) }.map { $0[1] })
            for step in rules.repair(missingHooks: missingHooks) {
                let result = tool.run(step.arguments)
                guard result.status == 0 || step.mayFail else {
                    throw ServiceGuardError(
                        "\(tool.command) \(step.arguments.joined(separator: " ")) failed: \(result.output); caid closes MODEL_SERVICE_PORT \(servicePort) to the network with \(tool.command) and needs root (CAP_NET_ADMIN); set CAID_SERVICE_GUARD=off only if another firewall does it")
                }
            }
            states[rules.family] = .restored(missing: missing.map { $0.dropFirst().joined(separator: " ") })
        }
        return states
    }

    /// Removes both families' chains and the jumps to them, the two families at once; what is not there is skipped.
    public func remove() {
        let families = self.families
        DispatchQueue.concurrentPerform(iterations: families.count) { index in
            let (rules, tool) = families[index]
            if tool.removeChains(table: "filter", ServiceGuardRules.hooks.map(\.chain)) { return }
            let removal = rules.removal
            for jump in removal.jumps {
                // Bounded: a jump inserted again and again by something else must not keep caid here.
                var removed = 0
                while removed < 16, tool.run(jump).status == 0 { removed += 1 }
            }
            for line in removal.chains { _ = tool.run(line) }
        }
    }

    /// Checks the guard every `interval` until cancelled, restoring and logging what a firewall reload flushed.
    public func watch(every interval: Duration, logger: Logger, onRestore: @Sendable (String) -> Void = { _ in }) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            if Task.isCancelled { return }
            do {
                // iptables and ip6tables are child processes to wait for: off the cooperative pool.
                let states = try await Blocking.run { () throws(ServiceGuardError) in try ensure() }
                for (family, state) in states.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
                    if case .restored(let missing) = state {
                        let line = "the \(family.rawValue) guard of port \(servicePort) was gone (\(missing.joined(separator: "; "))); restored"
                        logger.error("\(line)")
                        onRestore(line)
                    }
                }
            } catch {
                logger.critical("cannot restore the guard of port \(servicePort): \(error)")
            }
        }
    }
}
