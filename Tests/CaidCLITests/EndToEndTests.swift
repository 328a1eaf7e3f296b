import CaidControl
import CaidCore
import CaidTestSupport
import Foundation
import Testing

/// `caid run` as on a host: the server (caid, the KBS/AS, the OSS server, the inference stand-in) in one network
/// namespace, the client in another, the gateway in `netfilter` mode with real nat rules, and faults on the way.
@Suite(.serialized) struct EndToEndTests {
    @Test func serverAndClientInNamespacesWithFaults() async throws {
        let namespaces = try NamespacePair()
        defer { namespaces.remove() }
        let host = try await ModelHost(namespace: namespaces.server, gateway: "netfilter")
        defer { host.remove() }
        // Faults: the KBS answers 503 to its first requests, OSS to some GETs; the service is not up yet.
        try host.trustee.setFaults(#"{"unavailable": 4}"#)
        try host.setOSSFaults(#"{"status_503": 3}"#)

        // A pathname socket: reachable from the server's network namespace.
        let notify = try NotifySocket(path: host.dir.path + "/notify.sock")
        let daemon = try namespaces.start(in: namespaces.server, Programs.caid, ["run", "--env", host.env], environment: Programs.environment(["NOTIFY_SOCKET": notify.path]))
        defer { if daemon.exited() == nil { daemon.signal(SIGKILL); _ = daemon.wait() } }

        // While it starts, `caid health` says which stage each service is in and why it waits: asked after each
        // change of its status summary (STATUS=).
        var sawWaiting = false
        let ready = try? await daemon.until("caid ready", timeout: .seconds(60), notify: notify) { _, exited -> Bool? in
            if exited != nil { return false }
            let health = try namespaces.run(in: namespaces.server, Programs.caid, ["health", "--socket", host.socket])
            if health.stdout.contains("waiting for") || health.stdout.contains("backoff") { sawWaiting = true }
            return health.status == 0 ? true : nil
        }
        if let exited = daemon.exited() { Issue.record("caid run exited: \(exited.stderr)"); return }
        #expect(sawWaiting)
        #expect(ready == true, "\(daemon.stderr)")

        let status = try namespaces.run(in: namespaces.server, Programs.caid, ["health", "--json", "--socket", host.socket])
        let snapshot = try HealthRoutes.decode(Data(status.stdout.utf8))
        #expect(snapshot.ready)
        #expect(Set(snapshot.services.map(\.name)).isSuperset(of: ["attestation", "key", "fetch", "cachefs", "gateway"]))
        // The KBS faults show up as restarts of the attestation service, not as a failure.
        #expect(snapshot.services.first { $0.name == "attestation" }?.state == .running)

        for name in ["model.safetensors", "config.json", "tokenizer.json"] {
            let mounted = FileManager.default.contents(atPath: host.mountpoint + "/" + name)
            #expect(mounted != nil && mounted == FileManager.default.contents(atPath: host.plain + "/" + name), "\(name)")
        }

        let rules = try namespaces.run(in: namespaces.server, "/usr/sbin/iptables", ["-t", "nat", "-S", "CAID_GATEWAY"])
        #expect(rules.stdout.contains("--dport 8080"))
        // The guard of the service port went in before attestation (the KBS faults delayed it), and for IPv6 too.
        let log = daemon.stderr
        let guarded = log.range(of: "guard installed")
        let attested = log.range(of: "attested to Trustee")
        #expect(guarded != nil && attested != nil && guarded!.lowerBound < attested!.lowerBound, "\(log)")
        for tool in ["iptables", "ip6tables"] {
            let guardRules = try namespaces.run(in: namespaces.server, "/usr/sbin/" + tool, ["-S", "CAID_GUARD"])
            #expect(guardRules.stdout.contains("--dport 8080"), "\(tool): \(guardRules.stdout) \(guardRules.stderr)")
        }

        // The inference service comes up only now; the client reaches it through the tunnel on <server>:8080.
        let service = try await host.startService()
        let asAddress = "http://\(namespaces.serverAddress):\(host.trustee.peer.port)/trustee/as/"
        let tunnelPort = 41000
        let tunnel = try namespaces.start(in: namespaces.client, Programs.caid, ["tunnel", "--listen", "127.0.0.1:\(tunnelPort)", "--as-addr", asAddress, "--allow-sample"])
        defer { tunnel.signal(SIGTERM); _ = tunnel.wait() }
        try await tunnel.waitForOutput("proxy listening")
        let response = try namespaces.run(in: namespaces.client, "/usr/bin/curl", [
            "-sS", "--max-time", "20", "-x", "http://127.0.0.1:\(tunnelPort)", "http://\(namespaces.serverAddress):8080/config.json",
        ])
        #expect(response.stdout.contains("DemoForCausalLM"), "\(response.stdout) \(response.stderr) \(tunnel.stderr)")
        // Without the tunnel the client gets nothing from the service.
        let direct = try namespaces.run(in: namespaces.client, "/usr/bin/curl", ["-sS", "--max-time", "5", "http://\(namespaces.serverAddress):8080/config.json"])
        #expect(!direct.stdout.contains("DemoForCausalLM"))
        _ = service

        daemon.signal(SIGTERM)
        let result = await daemon.wait(timeout: .seconds(15))
        #expect(result?.status == 0, "\(result?.stderr ?? "killed after 15 s")")
        let after = try namespaces.run(in: namespaces.server, "/usr/sbin/iptables", ["-t", "nat", "-S"])
        #expect(!after.stdout.contains("CAID_GATEWAY"))
        let guardAfter = try namespaces.run(in: namespaces.server, "/usr/sbin/iptables", ["-S"])
        #expect(!guardAfter.stdout.contains("CAID_GUARD"), "a clean stop removes the guard")
        #expect(!FileManager.default.fileExists(atPath: host.mountpoint + "/config.json"), "still mounted after stop")
    }
}
