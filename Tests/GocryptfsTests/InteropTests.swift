import CaidTestSupport
import Crypto
import Foundation
import Gocryptfs
import Testing

/// caid's reader against volumes the real gocryptfs wrote.
@Suite(.serialized) struct InteropTests {
    @Test func configRoundTripsByteForByte() throws {
        let ws = try Workspace()
        defer { ws.remove() }
        for (name, flags) in [("default", [String]()), ("plain", ["-plaintextnames"]), ("det", ["-deterministic-names"]), ("lnm", ["-longnamemax", "100"])] {
            try GocryptfsTool.initVolume(ws.path(name), passfile: ws.passfile, flags: flags)
            let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: ws.path(name) + "/gocryptfs.conf")))
            let config = try VolumeConfig.parse(bytes)
            #expect(config.serialized() == bytes, "\(name)")
        }
    }

    @Test func unlocksTheMasterKeyGocryptfsXrayDumps() throws {
        let ws = try Workspace()
        defer { ws.remove() }
        try GocryptfsTool.initVolume(ws.path("c"), passfile: ws.passfile)
        let xray = try GocryptfsTool.run("/bin/sh", ["-c", "gocryptfs-xray -dumpmasterkey '\(ws.path("c"))/gocryptfs.conf' < '\(ws.passfile)'"])
        let expected = xray.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let volume = try ws.open(ws.path("c"))
        let master = volume.keys.masterKey.withUnsafeBytes { $0.map { String(format: "%02x", $0) }.joined() }
        #expect(master == expected)
    }

    @Test func aWrongPasswordIsReportedAsSuch() throws {
        let ws = try Workspace()
        defer { ws.remove() }
        try GocryptfsTool.initVolume(ws.path("c"), passfile: ws.passfile)
        #expect {
            try Array("wrong".utf8).withUnsafeBytes { try Volume(root: ws.path("c"), password: $0) }
        } throws: { ($0 as? GocryptfsError)?.code == .wrongPassword }
    }

    @Test(arguments: [("-aessiv", "AESSIV"), ("-xchacha", "XChaCha20Poly1305")])
    func refusesContentModesItDoesNotRead(flag: String, named: String) throws {
        let ws = try Workspace()
        defer { ws.remove() }
        try GocryptfsTool.initVolume(ws.path("c"), passfile: ws.passfile, flags: [flag])
        #expect { try ws.open(ws.path("c")) } throws: {
            ($0 as? GocryptfsError)?.code == .unsupportedFeature && "\($0)".contains(named)
        }
    }

    @Test(arguments: [[String](), ["-plaintextnames"], ["-deterministic-names"]])
    func readsEveryCaseGocryptfsWrote(flags: [String]) throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let (plain, cipher) = try ws.gocryptfsVolume(flags: flags, largeSize: flags.isEmpty ? 64 << 20 : 1 << 20, manyFiles: flags.isEmpty ? 1000 : 50)
        let expected = try GocryptfsTool.snapshot(of: plain)
        let (tree, skipped) = try ws.open(cipher).snapshot()
        #expect(skipped.isEmpty)
        #expect(tree.count == expected.count)
        for (path, value) in expected where tree[path] != value {
            Issue.record("\(path): expected \(value), caid read \(tree[path] ?? "nothing")")
        }
        if flags.isEmpty {
            // The long names really are hashed on disk, and the sparse file really has holes.
            let rootEntries = try FileManager.default.contentsOfDirectory(atPath: cipher)
            #expect(rootEntries.filter { $0.hasPrefix("gocryptfs.longname.") && $0.hasSuffix(".name") }.count == 3)
        }
    }

    @Test func sizeFormulaMatchesGocryptfs() {
        let cases: [(UInt64, UInt64)] = [(0, 0), (1, 51), (4096, 4146), (4097, 4179), (5000, 5082), (1 << 30, 1_082_130_450)]
        // (plaintext size, the ciphertext size gocryptfs writes for it)
        for (plain, cipher) in cases {
            #expect(ContentCipher.plainSize(cipherSize: cipher) == plain)
        }
        #expect(ContentCipher.plainSize(cipherSize: 18) == 0)
        #expect(ContentCipher.plainSize(cipherSize: 18 + 20) == 1)
    }
}
