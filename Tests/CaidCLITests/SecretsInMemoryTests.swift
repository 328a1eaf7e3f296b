import CaidTestSupport
import Foundation
import Testing

/// What a core image of a running `caid run` holds: taken with `gcore` (gdb) after the model is mounted, the way an
/// attacker with a dump, or a crash reporter, would see the process.
@Suite(.serialized) struct SecretsInMemoryTests {
    static let token = "CAIS-sts-token-7c1f0b9e42d8a6"

    @Test func coreImageOfARunningCaidHoldsNoPasswordAndOneCopyOfTheOSSCredentials() async throws {
        let host = try await ModelHost(sessionToken: Self.token)
        defer { host.remove() }
        let notify = try NotifySocket(path: host.dir.path + "/notify.sock")
        let daemon = try Programs.start(Programs.caid, ["run", "--env", host.env], environment: Programs.environment(["NOTIFY_SOCKET": notify.path]))
        defer { if daemon.exited() == nil { daemon.signal(SIGKILL); _ = daemon.wait() } }
        let notified = try? await daemon.until("caid ready", timeout: .seconds(60), notify: notify) { messages, exited -> Bool? in
            messages.contains { $0.hasPrefix("READY=1") } ? true : exited.map { _ in false }
        }
        if let exited = daemon.exited() { Issue.record("caid run exited: \(exited.stderr)"); return }
        #expect(notified == true, "\(daemon.stderr)")
        #expect(try Programs.run(Programs.caid, ["health", "--socket", host.socket]).status == 0)
        // The mount was unlocked with the password and the fetch signed its requests with the secret and the token.
        #expect(FileManager.default.contents(atPath: host.mountpoint + "/config.json") != nil)
        #expect(try host.ossServedBytes() > 0)

        // caid started itself again with glibc's wiping of freed memory in force.
        // (glibc parses the variable in place, so its separators read as NULs there.)
        let environ = String(decoding: (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(daemon.pid)/environ"))) ?? Data(), as: UTF8.self)
        #expect(environ.contains("GLIBC_TUNABLES=glibc.malloc.perturb=165") && environ.contains("glibc.malloc.tcache_count=0"))

        let core = host.dir.path + "/caid-core"
        let dump = try Programs.run("/usr/bin/gcore", ["-o", core, String(daemon.pid)])
        let file = core + "." + String(daemon.pid)
        #expect(dump.status == 0 && FileManager.default.fileExists(atPath: file), "\(dump.stdout) \(dump.stderr)")
        defer { try? FileManager.default.removeItem(atPath: file) }

        let counts = try Self.occurrences(in: file, of: [
            ModelHost.password, "oss-secret-value", Self.token, "LTAItest", host.mountpoint,
        ])
        // The image is a real one: the non-secret settings caid keeps are in it.
        #expect(counts["LTAItest", default: 0] >= 1 && counts[host.mountpoint, default: 0] >= 1, "\(counts)")
        // The password was wiped once the volume was unlocked; the OSS secret and token live in one buffer each.
        #expect(counts[ModelHost.password] == 0, "\(counts)")
        #expect(counts["oss-secret-value", default: 0] <= 1, "\(counts)")
        #expect(counts[Self.token, default: 0] <= 1, "\(counts)")
    }

    /// How often each string occurs in a (large) file, read through mmap by Python.
    static func occurrences(in path: String, of needles: [String]) throws -> [String: Int] {
        let script = """
            import json, mmap, sys
            with open(sys.argv[1], "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                out = {}
                for needle in sys.argv[2:]:
                    n, i, b = 0, 0, needle.encode()
                    while (i := m.find(b, i)) >= 0:
                        n += 1
                        i += 1
                    out[needle] = n
            print(json.dumps(out))
            """
        let result = try Programs.run("/usr/bin/env", ["python3", "-c", script, path] + needles)
        guard result.status == 0, let counts = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Int] else {
            throw PeerProcess.Failure(description: "counting in the core image failed: \(result.stderr)")
        }
        return counts
    }
}
