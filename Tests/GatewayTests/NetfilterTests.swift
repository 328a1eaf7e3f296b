import CaidTestSupport
import Foundation
import Gateway
import Testing

/// `netfilter` mode for real: `caid gateway` in a server namespace with its nat rules and its guard of the service
/// port, the independent TNG client in a client namespace dialling `<server>:8080`, the stand-in service on :8080
/// behind it. Run while holding `flock /tmp/caid-netns.lock`.
@Suite(.serialized) struct NetfilterTests {
    static let page = "served behind the gateway\n"

    /// The two namespaces, the service and the test Trustee in the server one, and caid's cai.env.
    final class Setup: @unchecked Sendable {
        let dir: TemporaryDirectory
        let namespaces: NamespacePair
        let service: Programs.Running
        let trustee: Programs.Running
        let asPort: Int
        let env: String

        init() async throws {
            dir = try TemporaryDirectory("caid-netfilter")
            namespaces = try NamespacePair()
            try FileManager.default.createDirectory(atPath: dir.path + "/www", withIntermediateDirectories: true)
            try Data(NetfilterTests.page.utf8).write(to: URL(fileURLWithPath: dir.path + "/www/index.html"))
            service = try namespaces.start(in: namespaces.server, "/usr/bin/env", [
                "python3", Programs.packageRoot + "/Tests/peers/static_server.py", "--root", dir.path + "/www", "--host", "0.0.0.0",
                "--port", "8080", "--port-file", dir.path + "/service.port",
            ])
            trustee = try namespaces.start(in: namespaces.server, "/usr/bin/env", [
                "python3", Programs.packageRoot + "/Tests/peers/trustee_server.py", "--host", "0.0.0.0", "--prefix", "/trustee/",
                "--port-file", dir.path + "/as.port",
            ])
            // The peers rename their port files into place (peerutil.announce_port).
            let directory = dir.path
            _ = try await Awaiting.until("the stand-in and the KBS listening", timeout: .seconds(10), on: [.directory(directory)]) { () -> Bool? in
                ["service.port", "as.port"].allSatisfy { FileManager.default.fileExists(atPath: directory + "/" + $0) } ? true : nil
            }
            asPort = try #require(Int(try String(contentsOfFile: dir.path + "/as.port", encoding: .utf8)))
            env = try dir.write("cai.env", """
                TRUSTEE_URL="http://\(namespaces.serverAddress):\(asPort)/trustee/"
                MODEL_KEY_ID="kbs:///default/aliyun/model-decryption-key"
                MODEL_OSS_BUCKET_PATH="models:/qwen"
                MODEL_OSS_ENDPOINT="http://127.0.0.1:1"
                MODEL_OSS_ACCESS_KEY_ID="LTAItest"
                MODEL_OSS_SECRET_ACCESS_KEY="oss-secret"
                MODEL_SERVICE_PORT=8080
                CAID_ATTESTER=sample
                CAID_GATEWAY_MODE=netfilter
                CAID_GATEWAY_RULE_CHECK=1
                CAID_GATEWAY_PORT=41001
                """)
        }

        /// Starts `caid gateway` and waits until its nat rules are in and it listens.
        func startCaid() async throws -> Programs.Running {
            let caid = try namespaces.start(in: namespaces.server, Programs.caid, ["gateway", "--env", env])
            do {
                // It installs the nat rules before it listens.
                try await caid.waitForOutput("attested gateway listening", in: .stderr)
            } catch {
                throw PeerProcess.Failure(description: "caid gateway did not start: \(error)")
            }
            guard try nat().contains("REDIRECT") else { throw PeerProcess.Failure(description: "caid gateway listens without its nat rules: \(caid.stderr)") }
            return caid
        }

        func server(_ tool: String, _ arguments: [String]) throws -> Programs.Result {
            try namespaces.run(in: namespaces.server, "/usr/sbin/" + tool, arguments)
        }

        func nat() throws -> String { try server("iptables", ["-t", "nat", "-S"]).stdout }
        func filter(_ tool: String = "iptables") throws -> String { try server(tool, ["-S"]).stdout }

        /// A plain HTTP request from the client namespace to `host:port`: SERVED, REFUSED (reset, nothing
        /// listening) or CLOSED (accepted, nothing served).
        func plain(_ host: String, port: Int = 8080, from namespace: String? = nil) throws -> String {
            let family = host.contains(":") ? "socket.AF_INET6" : "socket.AF_INET"
            let result = try namespaces.run(in: namespace ?? namespaces.client, "/usr/bin/env", [
                "python3", "-c", """
                import socket
                s = socket.socket(\(family), socket.SOCK_STREAM)
                s.settimeout(5)
                try:
                    s.connect(("\(host)", \(port)))
                    s.sendall(b"GET /index.html HTTP/1.0\\r\\n\\r\\n")
                    data = b""
                    while True:
                        chunk = s.recv(4096)
                        if not chunk: break
                        data += chunk
                except ConnectionRefusedError:
                    print("REFUSED"); raise SystemExit
                except Exception:
                    data = b""
                print("SERVED" if b"served" in data else "CLOSED")
                """,
            ])
            return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }

        /// The TNG client through the tunnel; the bodies it got.
        func throughTunnel(streams: Int = 3) throws -> [String] {
            let client = try namespaces.run(in: namespaces.client, "/usr/bin/env", [
                "python3", Programs.packageRoot + "/Tests/peers/tng_client.py", "--host", namespaces.serverAddress, "--port", "8080",
                "--as-addr", "http://\(namespaces.serverAddress):\(asPort)/trustee/as/", "--path", "/index.html", "--streams", String(streams),
            ])
            guard client.status == 0, let report = try JSONSerialization.jsonObject(with: Data(client.stdout.utf8)) as? [String: Any] else {
                throw PeerProcess.Failure(description: "tng_client failed: \(client.stdout) \(client.stderr)")
            }
            return ((report["streams"] as? [[String: Any]]) ?? []).compactMap { $0["body"] as? String }
        }

        func finish() {
            service.signal(SIGKILL); _ = service.wait()
            trustee.signal(SIGKILL); _ = trustee.wait()
            namespaces.remove()
            dir.remove()
        }
    }

    @Test func clientsReachTheServicePortOnlyThroughTheTunnel() async throws {
        let setup = try await Setup()
        defer { setup.finish() }
        // Before caid: the service is open to the network (what the guard is there to stop).
        #expect(try setup.plain(setup.namespaces.serverAddress) == "SERVED")
        let caid = try await setup.startCaid()
        defer { caid.signal(SIGKILL); _ = caid.wait() }

        // Through the tunnel: attested, then the page.
        let bodies = try setup.throughTunnel()
        #expect(bodies.count == 3)
        #expect(bodies.allSatisfy { $0.hasSuffix(Self.page) })

        // In the clear, from the other host: the nat rule sends it to the TLS gateway, which will not serve it.
        #expect(try setup.plain(setup.namespaces.serverAddress) != "SERVED")

        // On the server itself the service is still there, unredirected (vLLM's own health checks keep working),
        // through the host's external address as through loopback.
        for host in [setup.namespaces.serverAddress, "127.0.0.1"] {
            #expect(try setup.plain(host, from: setup.namespaces.server) == "SERVED", "\(host)")
        }

        // A clean stop removes the nat rules and the guard, jumps that something inserted twice included.
        _ = try setup.server("iptables", ["-I", "INPUT", "2", "-j", "CAID_GUARD"])
        _ = try setup.server("iptables", ["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "CAID_GATEWAY"])
        caid.signal(SIGTERM)
        let stopped = await caid.wait(timeout: .seconds(10))
        #expect(stopped?.status == 0, "\(stopped?.stderr ?? "still running")")
        #expect(try !setup.nat().contains("CAID_GATEWAY"))
        for tool in ["iptables", "ip6tables"] {
            #expect(try !setup.filter(tool).contains("CAID_GUARD"), "\(tool)")
        }
        #expect(try setup.plain(setup.namespaces.serverAddress) == "SERVED")
    }

    /// A `kill -9` leaves the guard: with the gateway gone (and even its nat rules flushed) the service port stays
    /// closed to the network until the next caid adopts the rules and serves through the tunnel again.
    @Test func killNineLeavesTheServicePortClosedUntilCaidIsBack() async throws {
        let setup = try await Setup()
        defer { setup.finish() }
        let first = try await setup.startCaid()
        #expect(first.stderr.contains("guard installed"))
        first.signal(SIGKILL)
        _ = first.wait()

        // What a killed gateway leaves, and the worst case of it: no nat rules at all.
        _ = try setup.server("iptables", ["-t", "nat", "-F"])
        for tool in ["iptables", "ip6tables"] {
            #expect(try setup.filter(tool).contains("-A INPUT -j CAID_GUARD"), "\(tool)")
        }
        #expect(try setup.plain(setup.namespaces.serverAddress) == "REFUSED")
        // Local clients are not affected.
        #expect(try setup.plain(setup.namespaces.serverAddress, from: setup.namespaces.server) == "SERVED")

        let second = try await setup.startCaid()
        defer { second.signal(SIGKILL); _ = second.wait() }
        #expect(second.stderr.contains("adopted the guard left by an earlier caid"), "\(second.stderr)")
        // Adopted, not duplicated.
        #expect(try setup.filter().components(separatedBy: "-A INPUT -j CAID_GUARD").count == 2)
        let bodies = try setup.throughTunnel(streams: 1)
        #expect(bodies.count == 1 && bodies.allSatisfy { $0.hasSuffix(Self.page) })
        #expect(try setup.plain(setup.namespaces.serverAddress) != "SERVED")
    }

    /// A firewall reload that flushes the nat table and the filter table: caid notices within its 10 s check, puts
    /// both back, and says so in its log; afterwards the port is closed again and the tunnel works.
    @Test func flushedRulesAreRestored() async throws {
        let setup = try await Setup()
        defer { setup.finish() }
        let caid = try await setup.startCaid()
        defer { caid.signal(SIGKILL); _ = caid.wait() }

        let flushed = ContinuousClock.now
        _ = try setup.server("iptables", ["-t", "nat", "-F"])
        _ = try setup.server("iptables", ["-F"])
        _ = try setup.server("ip6tables", ["-F"])
        // Until caid's next check the port is as open as the flush left it (not asserted: the check may come first).
        // caid logs each restoration after making it: each line it writes wakes the check.
        let restored = try? await caid.until("the rules restored", timeout: .seconds(15)) { _ -> Bool? in
            let log = caid.stderr
            guard log.contains("were gone"), log.contains("ipv4 guard"), log.contains("ipv6 guard") else { return nil }
            return try setup.nat().contains("REDIRECT") && setup.filter().contains("-A INPUT -j CAID_GUARD") ? true : nil
        }
        #expect(restored == true, "\(caid.stderr)")
        print("rules restored \(ContinuousClock.now - flushed) after the flush")
        #expect(try setup.filter("ip6tables").contains("-A INPUT -j CAID_GUARD"))
        #expect(try setup.plain(setup.namespaces.serverAddress) != "SERVED")
        let bodies = try setup.throughTunnel(streams: 1)
        #expect(bodies.count == 1)
    }

    /// IPv6 to the service port from the network is refused (the gateway listens on IPv4 only, so there is nothing
    /// to redirect it to); IPv6 over loopback still reaches it.
    @Test func ipv6ToTheServicePortIsRefused() async throws {
        let setup = try await Setup()
        defer { setup.finish() }
        let (serverV6, clientV6) = ("fd00:ca1d::1", "fd00:ca1d::2")
        for (namespace, address) in [(setup.namespaces.server, serverV6), (setup.namespaces.client, clientV6)] {
            let links = try setup.namespaces.run(in: namespace, "/usr/sbin/ip", ["-o", "link", "show"]).stdout
            let name = try #require(links.split(separator: "\n").compactMap { line -> String? in
                let field = line.split(separator: " ")[1].split(separator: "@")[0].trimmingCharacters(in: CharacterSet(charactersIn: ":"))
                return field == "lo" ? nil : field
            }.first)
            let added = try setup.namespaces.run(in: namespace, "/usr/sbin/ip", ["-6", "addr", "add", address + "/64", "dev", name, "nodad"])
            #expect(added.status == 0, "\(added.stderr)")
        }
        // An IPv6 listener on the service port (the stand-in serves IPv4 only).
        let v6 = try setup.namespaces.start(in: setup.namespaces.server, "/usr/bin/env", [
            "python3", "-c", """
            import socket
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::", 8080)); s.listen(16)
            print("listening", flush=True)
            while True:
                c, _ = s.accept(); c.recv(4096); c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\nserved over IPv6"); c.close()
            """,
        ])
        defer { v6.signal(SIGKILL); _ = v6.wait() }
        try await v6.waitForOutput("listening")
        let open = try setup.plain(serverV6)
        #expect(open == "SERVED")  // before caid: open, so the refusal below is the guard's

        let caid = try await setup.startCaid()
        defer { caid.signal(SIGKILL); _ = caid.wait() }
        #expect(try setup.plain(serverV6) == "REFUSED")
        #expect(try setup.plain("::1", from: setup.namespaces.server) == "SERVED")
    }
}

/// The guard's rules as lines, without running anything.
@Suite struct ServiceGuardRulesTests {
    @Test func refusesTheServicePortOnlyFromOutsideLoopbackAndAfterDNAT() {
        for family in ServiceGuardRules.Family.allCases {
            let rules = ServiceGuardRules(servicePort: 8080, family: family)
            let input = rules.rules.filter { $0.chain == ServiceGuardRules.inputChain }.map { $0.rule }
            #expect(input == [["!", "-i", "lo", "-p", "tcp", "--dport", "8080", "-j", "REJECT", "--reject-with", "tcp-reset"]])
            let forward = rules.rules.filter { $0.chain == ServiceGuardRules.forwardChain }.map { $0.rule }
            #expect(forward == [["-p", "tcp", "-m", "conntrack", "--ctstate", "DNAT", "--ctorigdstport", "8080", "-j", "REJECT", "--reject-with", "tcp-reset"]])
            // The gateway's port is never named: redirected connections reach INPUT with it, and pass.
            #expect(!rules.rules.contains { $0.rule.contains("41001") })
        }
        #expect(ServiceGuardRules.Family.ipv6.command == "ip6tables")
    }

    @Test func checksCoverEveryRuleAndJump() {
        let rules = ServiceGuardRules(servicePort: 9000, family: .ipv4)
        #expect(rules.checks.count == 4)
        #expect(rules.checks.contains(["-C", "INPUT", "-j", "CAID_GUARD"]))
        #expect(rules.checks.contains(["-C", "FORWARD", "-j", "CAID_GUARD_FWD"]))
        #expect(rules.checks.allSatisfy { $0.first == "-C" })
    }

    @Test func repairRefillsTheChainsAndInsertsOnlyMissingJumps() {
        let rules = ServiceGuardRules(servicePort: 9000, family: .ipv6)
        let steps = rules.repair(missingHooks: ["INPUT"])
        #expect(steps.filter { $0.mayFail }.map(\.arguments) == [["-N", "CAID_GUARD"], ["-N", "CAID_GUARD_FWD"]])
        #expect(steps.contains { $0.arguments == ["-F", "CAID_GUARD"] })
        #expect(steps.filter { $0.arguments.first == "-A" }.count == 2)
        #expect(steps.last?.arguments == ["-I", "INPUT", "1", "-j", "CAID_GUARD"])
        #expect(!steps.contains { $0.arguments.starts(with: ["-I", "FORWARD"]) })
        // Chains are made before they are filled, and filled before anything jumps to them.
        let order = steps.map { $0.arguments.first ?? "" }
        #expect(order.lastIndex(of: "-N")! < order.firstIndex(of: "-A")!)
        #expect(order.lastIndex(of: "-A")! < order.firstIndex(of: "-I")!)
    }

    @Test func removalDropsJumpsBeforeChains() {
        let removal = ServiceGuardRules(servicePort: 9000, family: .ipv4).removal
        #expect(removal.jumps == [["-D", "INPUT", "-j", "CAID_GUARD"], ["-D", "FORWARD", "-j", "CAID_GUARD_FWD"]])
        #expect(removal.chains == [["-F", "CAID_GUARD"], ["-X", "CAID_GUARD"], ["-F", "CAID_GUARD_FWD"], ["-X", "CAID_GUARD_FWD"]])
    }

    /// An `iptables-save -t filter` listing with caid's guard, a second jump to it, and someone else's rules.
    static let filterListing = """
        # Generated by iptables-save v1.8.9 (nf_tables) on Thu Dec  3 14:30:00 2026
        *filter
        :INPUT ACCEPT [0:0]
        :FORWARD DROP [0:0]
        :OUTPUT ACCEPT [0:0]
        :CAID_GUARD - [0:0]
        :CAID_GUARD_FWD - [0:0]
        :DOCKER - [0:0]
        -A INPUT -j CAID_GUARD
        -A INPUT -p tcp -m tcp --dport 22 -m comment --comment "ssh -j CAID_GUARD here" -j ACCEPT
        -A INPUT -i eth0 -j CAID_GUARD
        -A FORWARD -j CAID_GUARD_FWD
        -A FORWARD -o docker0 -j DOCKER
        -A CAID_GUARD ! -i lo -p tcp -m tcp --dport 8080 -j REJECT --reject-with tcp-reset
        -A CAID_GUARD_FWD -p tcp -m conntrack --ctstate DNAT --ctorigdstport 8080 -j REJECT --reject-with tcp-reset
        COMMIT
        # Completed on Thu Dec  3 14:30:00 2026
        """

    @Test func chainRemovalDeletesEveryJumpByItsOwnSpecificationThenTheChains() throws {
        let script = try #require(ChainRemoval.script(table: "filter", chains: ["CAID_GUARD", "CAID_GUARD_FWD"], listing: Self.filterListing))
        #expect(script == """
            *filter
            -D INPUT -j CAID_GUARD
            -D INPUT -i eth0 -j CAID_GUARD
            -D FORWARD -j CAID_GUARD_FWD
            -F CAID_GUARD
            -F CAID_GUARD_FWD
            -X CAID_GUARD
            -X CAID_GUARD_FWD
            COMMIT

            """)
    }

    @Test func chainRemovalOfWhatIsNotThereIsNothingToDo() {
        let bare = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j DOCKER\nCOMMIT\n"
        #expect(ChainRemoval.script(table: "nat", chains: [NatRules.chain], listing: bare) == nil)
        // A chain left empty and unreferenced (a killed caid between -N and -A) still goes.
        let empty = "*nat\n:CAID_GATEWAY - [0:0]\nCOMMIT\n"
        #expect(ChainRemoval.script(table: "nat", chains: [NatRules.chain], listing: empty) == "*nat\n-F CAID_GATEWAY\n-X CAID_GATEWAY\nCOMMIT\n")
    }

    @Test func natChecksMirrorTheRules() {
        let nat = NatRules(servicePort: 8080, listenPort: 41001)
        #expect(nat.checks.count == nat.rules.count - 1)  // every rule but the chain's creation
        #expect(nat.checks.allSatisfy { $0.contains("-C") && !$0.contains("-A") && !$0.contains("-I") })
        #expect(nat.checks.contains(["-t", "nat", "-C", "PREROUTING", "-p", "tcp", "-j", "CAID_GATEWAY"]))
    }
}
