import Foundation

/// Two network namespaces joined by a veth pair (`server` 10.231.N.1, `client` 10.231.N.2), made for one test and
/// removed with everything in them (addresses, nat rules) by ``remove()``. Needs root.
public final class NamespacePair: Sendable {
    public let server: String
    public let client: String
    public let serverAddress: String
    public let clientAddress: String

    public init() throws {
        let tag = String(UInt32.random(in: 0..<0xFFFF), radix: 16)
        let subnet = Int.random(in: 1...254)
        server = "caid-s-\(tag)"
        client = "caid-c-\(tag)"
        serverAddress = "10.231.\(subnet).1"
        clientAddress = "10.231.\(subnet).2"
        let steps: [[String]] = [
            ["netns", "add", server], ["netns", "add", client],
            ["link", "add", "cs\(tag)", "type", "veth", "peer", "name", "cc\(tag)"],
            ["link", "set", "cs\(tag)", "netns", server], ["link", "set", "cc\(tag)", "netns", client],
            ["-n", server, "addr", "add", "\(serverAddress)/24", "dev", "cs\(tag)"],
            ["-n", client, "addr", "add", "\(clientAddress)/24", "dev", "cc\(tag)"],
            ["-n", server, "link", "set", "cs\(tag)", "up"], ["-n", client, "link", "set", "cc\(tag)", "up"],
            ["-n", server, "link", "set", "lo", "up"], ["-n", client, "link", "set", "lo", "up"],
        ]
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
        try Programs.start("/usr/bin/nsenter", Self.enter(namespace) + [path] + arguments, environment: environment)
    }

    public func run(in namespace: String, _ path: String, _ arguments: [String]) throws -> Programs.Result {
        try Programs.run("/usr/bin/nsenter", Self.enter(namespace) + [path] + arguments)
    }

    /// `nsenter` arguments that enter only the network namespace `name`.
    public static func enter(_ name: String) -> [String] {
        ["--net=/run/netns/\(name)", "--"]
    }

    /// Deletes both namespaces; the veth pair and their nat tables go with them.
    public func remove() {
        for namespace in [server, client] { _ = try? Programs.run("/usr/sbin/ip", ["netns", "delete", namespace]) }
    }
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

    public func start(in namespace: String, _ path: String, _ arguments: [String], environment: [String: String] = Programs.environment()) throws -> Programs.Running {
        try Programs.start("/usr/bin/nsenter", NamespacePair.enter(namespace) + [path] + arguments, environment: environment)
    }

    public func run(in namespace: String, _ path: String, _ arguments: [String]) throws -> Programs.Result {
        try Programs.run("/usr/bin/nsenter", NamespacePair.enter(namespace) + [path] + arguments)
    }

    public func remove() {
        for namespace in hosts + [infra] { _ = try? Programs.run("/usr/sbin/ip", ["netns", "delete", namespace]) }
    }
}
