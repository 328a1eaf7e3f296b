import Foundation

/// A server and a client network namespace on one link (a ``NamespaceNetwork`` of two hosts), made for one test and
/// removed with everything in them (addresses, nat rules, mounts' network) by ``remove()``. Needs root.
public final class NamespacePair: Sendable {
    private let network: NamespaceNetwork

    public var server: String { network.hosts[0] }
    public var client: String { network.hosts[1] }
    public var serverAddress: String { network.addresses[0] }
    public var clientAddress: String { network.addresses[1] }

    public init() throws {
        network = try NamespaceNetwork(hosts: 2)
    }

    public func start(in namespace: String, _ path: String, _ arguments: [String], environment: [String: String] = Programs.environment()) throws -> Programs.Running {
        try network.start(in: namespace, path, arguments, environment: environment)
    }

    public func run(in namespace: String, _ path: String, _ arguments: [String]) throws -> Programs.Result {
        try network.run(in: namespace, path, arguments)
    }

    /// `nsenter` arguments that enter only the network namespace `name`.
    public static func enter(_ name: String) -> [String] {
        ["--net=/run/netns/\(name)", "--"]
    }

    public func remove() { network.remove() }
}

/// A small LAN of network namespaces: `infra` holds a bridge (10.232.N.254, where shared servers listen) and each
/// host namespace is joined to it (10.232.N.1, .2, …). Removed with everything in it by ``remove()``. Needs root.
public final class NamespaceNetwork: Sendable {
    public let infra: String
    public let infraAddress: String
    public let hosts: [String]
    public let addresses: [String]

    public init(hosts count: Int) throws {
        let tag = String(UInt32.random(in: 0..<0xFFFF), radix: 16)
        let subnet = Int.random(in: 1...254)
        infra = "caid-i-\(tag)"
        infraAddress = "10.232.\(subnet).254"
        hosts = (1...count).map { "caid-h\($0)-\(tag)" }
        addresses = (1...count).map { "10.232.\(subnet).\($0)" }
        var steps: [[String]] = [
            ["netns", "add", infra], ["-n", infra, "link", "set", "lo", "up"],
            ["-n", infra, "link", "add", "br0", "type", "bridge"], ["-n", infra, "link", "set", "br0", "up"],
            ["-n", infra, "addr", "add", "\(infraAddress)/24", "dev", "br0"],
        ]
        for (index, host) in hosts.enumerated() {
            let inside = "h\(index)\(tag)"
            let bridged = "b\(index)\(tag)"
            steps += [
                ["netns", "add", host], ["-n", host, "link", "set", "lo", "up"],
                ["link", "add", inside, "type", "veth", "peer", "name", bridged],
                ["link", "set", inside, "netns", host], ["link", "set", bridged, "netns", infra],
                ["-n", infra, "link", "set", bridged, "master", "br0"], ["-n", infra, "link", "set", bridged, "up"],
                ["-n", host, "addr", "add", "\(addresses[index])/24", "dev", inside], ["-n", host, "link", "set", inside, "up"],
            ]
        }
        for step in steps {
            let result = try Programs.run("/usr/sbin/ip", step)
            guard result.status == 0 else {
                remove()
                throw PeerProcess.Failure(description: "ip \(step.joined(separator: " ")) failed: \(result.stderr)")
            }
        }
    }

    /// Runs a program inside a namespace's network, sharing this process's mounts (`ip netns exec` would give it a
    /// mount namespace of its own, hiding a FUSE mount it makes).
    public func start(in namespace: String, _ path: String, _ arguments: [String], environment: [String: String] = Programs.environment()) throws -> Programs.Running {
        try Programs.start("/usr/bin/nsenter", NamespacePair.enter(namespace) + [path] + arguments, environment: environment)
    }

    public func run(in namespace: String, _ path: String, _ arguments: [String]) throws -> Programs.Result {
        try Programs.run("/usr/bin/nsenter", NamespacePair.enter(namespace) + [path] + arguments)
    }

    /// Deletes every namespace; the links, addresses and nat tables go with them.
    public func remove() {
        for namespace in hosts + [infra] { _ = try? Programs.run("/usr/sbin/ip", ["netns", "delete", namespace]) }
    }
}
