import CaidBase
import CaidTestSupport
import Foundation
import Testing

/// No core files: a trap in caid (here SIGSEGV and SIGABRT, what a Swift trap or a bad pointer raise) writes none,
/// even when the limit it was started with allows them and `core_pattern` points at a directory anyone could read.
/// A plain program started the same way does leave one there, so the check can fail. Changes the machine's
/// core_pattern for the test and puts the old one back, even on failure.
@Suite(.serialized) struct CoreDumpTests {
    static let patternFile = "/proc/sys/kernel/core_pattern"

    @Test func aTrapInCaidLeavesNoCoreFile() async throws {
        let dir = try TemporaryDirectory("caid-core")
        defer { dir.remove() }
        let saved = try String(contentsOfFile: Self.patternFile, encoding: .utf8)
        try Data((dir.path + "/core.%e.%p\n").utf8).write(to: URL(fileURLWithPath: Self.patternFile))
        defer { try? Data(saved.utf8).write(to: URL(fileURLWithPath: Self.patternFile)) }
        func cores() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).filter { $0.hasPrefix("core.") } }

        // The control: the same limit, the same signal, a program that keeps dumps on.
        // It says so once the shell has become it (exec), so that the signal reaches the program, not the shell.
        let control = try Programs.start("/bin/sh", ["-c", "ulimit -c unlimited && exec python3 -c 'import time; print(\"started\", flush=True); time.sleep(30)'"])
        try await control.waitForOutput("started")
        control.signal(SIGSEGV)
        let controlled = await control.wait(timeout: .seconds(20))
        #expect(controlled?.status == 128 + SIGSEGV)
        #expect(cores().contains { $0.hasPrefix("core.python3.") }, "the control left no core: \(cores())")

        for trap in [SIGSEGV, SIGABRT] {
            let port = Programs.unusedPort()
            let caid = try Programs.start("/bin/sh", [
                "-c", "ulimit -c unlimited && exec \"$0\" tunnel --listen 127.0.0.1:\(port) --as-addr http://127.0.0.1:1/as/", Programs.caid,
            ], environment: Programs.environment(["SWIFT_BACKTRACE": "enable=no"]))
            try await caid.waitForOutput("proxy listening")
            // What the kernel sees: no core limit and not dumpable.
            let limits = (try? String(contentsOfFile: "/proc/\(caid.pid)/limits", encoding: .utf8)) ?? ""
            let coreLine = limits.split(separator: "\n").first { $0.hasPrefix("Max core file size") }.map(String.init) ?? ""
            #expect(coreLine.split(separator: " ", omittingEmptySubsequences: true).suffix(3).prefix(2) == ["0", "0"], "\(coreLine)")
            caid.signal(trap)
            let result = await caid.wait(timeout: .seconds(20))
            #expect(result?.status == 128 + trap)
            #expect(!cores().contains { $0.hasPrefix("core.caid") }, "caid left a core file: \(cores())")
        }
    }

    /// The bytes of a ``Secret`` sit in pages the kernel leaves out of core dumps (`dd` in /proc/self/smaps).
    @Test func secretBytesAreExcludedFromDumps() throws {
        let secret = Secret(Array("model password".utf8))
        let address = secret.withBytes { UInt(bitPattern: $0.baseAddress) }
        // Read to the end: procfs files have no size.
        let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/smaps"))
        defer { try? handle.close() }
        let smaps = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
        var inRegion = false
        var flags: String?
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if let range = fields.first, range.contains("-"), !range.hasSuffix(":") {
                let bounds = range.split(separator: "-").compactMap { UInt($0, radix: 16) }
                inRegion = bounds.count == 2 && bounds[0] <= address && address < bounds[1]
            } else if inRegion, line.hasPrefix("VmFlags:") {
                flags = String(line)
                break
            }
        }
        let found = try #require(flags, "no mapping holds the secret's address \(String(address, radix: 16)) in \(smaps.count) bytes of smaps")
        #expect(found.split(separator: " ").contains("dd"), "\(found)")
        // A secret that was wiped holds nothing; the pages are gone with it.
        secret.wipe()
        #expect(secret.isEmpty)
    }
}
