import CaidTestSupport
import Foundation
import Gocryptfs
import Testing

/// `caid encrypt` output, checked with the real gocryptfs.
@Suite(.serialized) struct EncryptTests {
    @Test func gocryptfsReadsEverythingCaidEncrypted() throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let plain = ws.path("plain"), cipher = ws.path("cipher"), mount = ws.path("mnt")
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        try GocryptfsTool.makeTree(at: plain, largeSize: 64 << 20)
        let result = try Programs.run(Programs.caid, ["encrypt", "--plain", plain, "--cipher", cipher, "--passfile", ws.passfile, "--verify"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("verified"))

        let fsck = try Programs.run("/usr/bin/gocryptfs", ["-fsck", "-passfile", ws.passfile, cipher])
        #expect(fsck.status == 0, "\(fsck.stdout)\(fsck.stderr)")
        #expect(fsck.stdout.contains("no problems found"))

        try GocryptfsTool.mount(cipher, at: mount, passfile: ws.passfile, readOnly: true)
        defer { GocryptfsTool.unmount(mount) }
        let expected = try GocryptfsTool.snapshot(of: plain)
        let seen = try GocryptfsTool.snapshot(of: mount)
        #expect(seen.count == expected.count)
        for (path, value) in expected where seen[path] != value {
            Issue.record("\(path): expected \(value), gocryptfs shows \(seen[path] ?? "nothing")")
        }
        // The format's own choices: default flags, fresh per-directory IVs, long names hashed.
        let config = try VolumeConfig.parse(Array(try Data(contentsOf: URL(fileURLWithPath: cipher + "/gocryptfs.conf"))))
        #expect(config.features == VolumeConfig.defaultFeatures)
        #expect(config.scrypt.n == 65536 && config.scrypt.r == 8 && config.scrypt.p == 1 && config.scrypt.salt.count == 32)
        let rootIV = try Data(contentsOf: URL(fileURLWithPath: cipher + "/gocryptfs.diriv"))
        let volume = try ws.open(cipher)
        let dir1 = try volume.diskName(of: Array("dir1".utf8), in: "")
        #expect(try Data(contentsOf: URL(fileURLWithPath: cipher + "/" + dir1 + "/gocryptfs.diriv")) != rootIV)
        #expect(try FileManager.default.contentsOfDirectory(atPath: cipher).filter { $0.hasSuffix(".name") }.count == 3)
    }

    @Test func identicalFilesGetDifferentCiphertext() throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let plain = ws.path("plain")
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        let block = Data(repeating: 7, count: 8192)
        try block.write(to: URL(fileURLWithPath: plain + "/a"))
        try block.write(to: URL(fileURLWithPath: plain + "/b"))
        let writer = VolumeWriter()
        try Array(ws.password.utf8).withUnsafeBytes { password in
            _ = try writer.encrypt(plainDirectory: plain, cipherDirectory: ws.path("c"), password: password)
        }
        let volume = try ws.open(ws.path("c"))
        let a = try Data(contentsOf: URL(fileURLWithPath: volume.path(volume.diskName(of: Array("a".utf8), in: ""))))
        let b = try Data(contentsOf: URL(fileURLWithPath: volume.path(volume.diskName(of: Array("b".utf8), in: ""))))
        #expect(a.count == b.count && a.count == 18 + 2 * 4128)
        #expect(a.prefix(18) != b.prefix(18))  // fresh file IDs
        #expect(a[18..<34] != a[(18 + 4128)..<(18 + 4128 + 16)])  // fresh nonces per block
    }

    @Test func refusesANonEmptyCipherDirectory() throws {
        let ws = try Workspace()
        defer { ws.remove() }
        try FileManager.default.createDirectory(atPath: ws.path("plain"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: ws.path("cipher-existing"), withIntermediateDirectories: true)
        try ws.dir.write("cipher-existing/keep.txt", "precious")
        let result = try Programs.run(Programs.caid, ["encrypt", "--plain", ws.path("plain"), "--cipher", ws.path("cipher-existing"), "--passfile", ws.passfile])
        #expect(result.status == 1)
        #expect(result.stderr.contains("is not empty"))
        #expect(try String(contentsOfFile: ws.path("cipher-existing/keep.txt"), encoding: .utf8) == "precious")
    }

    @Test(arguments: [SIGINT, SIGKILL])
    func anInterruptedRunLeavesNoVolumeThatLooksComplete(signal: Int32) async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let plain = ws.path("plain")
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        try GocryptfsTool.makeTree(at: plain, largeSize: 4 << 30, manyFiles: 10, sparseLarge: true)
        let run = try Programs.start(Programs.caid, ["encrypt", "--plain", plain, "--cipher", ws.path("cipher"), "--passfile", ws.passfile])
        // Wait until the staging directory has content, then interrupt.
        let root = ws.dir.path
        @Sendable func staged() -> String? {
            (try? FileManager.default.contentsOfDirectory(atPath: root))?.first { $0.hasPrefix(".cipher.partial-") }.map { root + "/" + $0 }
        }
        try await FileEvents.wait(in: { [root] + (staged().map { [$0] } ?? []) }, what: "gocryptfs.conf staged") { () -> Void? in
            // An encrypt that ended early leaves the rest of the test to say what went wrong.
            if run.exited() != nil { return () }
            guard let staged = staged(), (try? FileManager.default.contentsOfDirectory(atPath: staged))?.contains("gocryptfs.conf") == true else { return nil }
            return ()
        }
        run.signal(signal)
        let result = await run.wait(timeout: .seconds(30))
        #expect(!FileManager.default.fileExists(atPath: ws.path("cipher")))
        if signal == SIGINT {
            #expect(result?.status == 130, "\(result?.stderr ?? "")")
            #expect(result?.stderr.contains("nothing was left") == true)
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: ws.dir.path).filter { $0.contains(".partial-") }
            #expect(leftovers.isEmpty)
        }
    }
}

@Suite struct NameVectorTests {
    @Test func longNameThresholdIsOnTheEncryptedLength() throws {
        let ws = try Workspace()
        defer { ws.remove() }
        try GocryptfsTool.initVolume(ws.path("c"), passfile: ws.passfile)
        let volume = try ws.open(ws.path("c"))
        let iv = try volume.directoryIV("")
        let short = try volume.names.encrypt(Array(GocryptfsTool.name175.utf8), iv: iv)
        let long = try volume.names.encrypt(Array(GocryptfsTool.name176.utf8), iv: iv)
        #expect(short.count == 235 && !volume.names.needsLongName(short))
        #expect(long.count == 256 && volume.names.needsLongName(long))
        #expect(try volume.names.decrypt(long, iv: iv) == Array(GocryptfsTool.name176.utf8))
        // A 16-byte name pads to 32 bytes: PKCS#7 always adds padding.
        let sixteen = try volume.names.encrypt(Array("0123456789abcdef".utf8), iv: iv)
        #expect(sixteen.count == 43)
        for bad in ["", ".", "..", "a/b"] {
            #expect(throws: GocryptfsError.self) { try volume.names.encrypt(Array(bad.utf8), iv: iv) }
        }
    }

    @Test func malformedEncryptedNamesAreErrorsNotCrashes() throws {
        let ws = try Workspace()
        defer { ws.remove() }
        try GocryptfsTool.initVolume(ws.path("c"), passfile: ws.passfile)
        let volume = try ws.open(ws.path("c"))
        let iv = try volume.directoryIV("")
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.")
        for length in 0..<80 {
            let name = String((0..<length).map { _ in alphabet.randomElement()! })
            do {
                let plain = try volume.names.decrypt(name, iv: iv)
                try NameCipher.validate(plain)
            } catch {
                #expect(error.code == .corruptName || error.code == .invalidName)
            }
        }
    }
}
