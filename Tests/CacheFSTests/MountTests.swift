import CaidTestSupport
import Foundation
import Gocryptfs
import Testing

/// The caid mount against gocryptfs's own mount of the same ciphertext.
@Suite(.serialized) struct MountTests {
    @Test(arguments: [[String](), ["-plaintextnames"], ["-deterministic-names"]])
    func showsExactlyWhatGocryptfsShows(flags: [String]) async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let (plain, cipher) = try ws.gocryptfsVolume(flags: flags, largeSize: flags.isEmpty ? 64 << 20 : 1 << 20, manyFiles: flags.isEmpty ? 1000 : 50)
        try GocryptfsTool.mount(cipher, at: ws.path("reference"), passfile: ws.passfile, readOnly: true)
        defer { GocryptfsTool.unmount(ws.path("reference")) }
        let mount = try await CaidMount(cipher: cipher, at: ws.path("caid"), passfile: ws.passfile)
        let reference = try GocryptfsTool.snapshot(of: ws.path("reference"))
        let seen = try GocryptfsTool.snapshot(of: ws.path("caid"))
        #expect(reference == (try GocryptfsTool.snapshot(of: plain)))
        #expect(seen.count == reference.count)
        for (path, value) in reference where seen[path] != value {
            Issue.record("\(path): gocryptfs shows \(value), caid shows \(seen[path] ?? "nothing")")
        }
        // Listings, sizes and stat fields an application sees.
        let caidMany = try FileManager.default.contentsOfDirectory(atPath: ws.path("caid/many")).sorted()
        #expect(caidMany == (try FileManager.default.contentsOfDirectory(atPath: ws.path("reference/many")).sorted()))
        for name in ["sparse.bin", "size-4097", "link-to-nested", "dir1"] {
            let a = try FileManager.default.attributesOfItem(atPath: ws.path("caid/" + name))
            let b = try FileManager.default.attributesOfItem(atPath: ws.path("reference/" + name))
            #expect(a[.size] as? Int == b[.size] as? Int, "\(name)")
            #expect(a[.type] as? FileAttributeType == b[.type] as? FileAttributeType, "\(name)")
        }
        // Read-only.
        #expect(!FileManager.default.createFile(atPath: ws.path("caid/new.txt"), contents: Data("x".utf8)))
        let stopped = await mount.stop()
        #expect(stopped?.status == 0, "\(stopped?.stderr ?? "")")
        #expect(!GocryptfsTool.isMounted(ws.path("caid")))
    }

    @Test func clearsAStaleMountLeftByAKilledProcess() async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let (_, cipher) = try ws.gocryptfsVolume(largeSize: 0, manyFiles: 3)
        let first = try await CaidMount(cipher: cipher, at: ws.path("m"), passfile: ws.passfile)
        first.process.signal(SIGKILL)
        _ = first.process.wait()
        #expect(throws: (any Error).self) { try FileManager.default.contentsOfDirectory(atPath: ws.path("m")) }
        let second = try await CaidMount(cipher: cipher, at: ws.path("m"), passfile: ws.passfile)
        #expect(try String(contentsOfFile: ws.path("m/dir1/dir2/nested.txt"), encoding: .utf8) == "nested\n")
        #expect(second.process.stderr.contains("clearing a stale mount"))
        await second.stop()
    }

    /// A dead mount's root still shows its owner from the kernel's attribute cache; with a non-root
    /// CAID_MOUNT_OWNER that once made the ownership check refuse the stale mount point on every retry.
    @Test func clearsAStaleMountWhoseOwnerIsNotRoot() async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let (_, cipher) = try ws.gocryptfsVolume(largeSize: 0, manyFiles: 3)
        let first = try await CaidMount(cipher: cipher, at: ws.path("m"), passfile: ws.passfile, extra: ["--owner", "1001:1001", "--allow-other"])
        var info = stat()
        #expect(stat(ws.path("m"), &info) == 0 && info.st_uid == 1001)
        first.process.signal(SIGKILL)
        _ = first.process.wait()
        let second = try await CaidMount(cipher: cipher, at: ws.path("m"), passfile: ws.passfile, extra: ["--owner", "1001:1001", "--allow-other"])
        #expect(second.process.stderr.contains("clearing a stale mount"), "\(second.process.stderr)")
        #expect(try String(contentsOfFile: ws.path("m/dir1/dir2/nested.txt"), encoding: .utf8) == "nested\n")
        await second.stop()
    }

    /// A relative one-letter mount point once trapped in Foundation's `deletingLastPathComponent` (PathText).
    @Test func relativePathsMountUnderTheWorkingDirectory() async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        _ = try ws.gocryptfsVolume(largeSize: 0, manyFiles: 3)
        let mount = try await CaidMount(cipher: "cipher", at: "m", passfile: ws.passfile, in: ws.dir.path)
        #expect(try String(contentsOfFile: ws.path("m/dir1/dir2/nested.txt"), encoding: .utf8) == "nested\n")
        let stopped = await mount.stop()
        #expect(stopped?.status == 0, "\(stopped?.stderr ?? "")")
        #expect(!GocryptfsTool.isMounted(ws.path("m")))
    }

    @Test func refusesAWrongPasswordWithGocryptfsExitCode() throws {
        let ws = try Workspace()
        defer { ws.remove() }
        try GocryptfsTool.initVolume(ws.path("c"), passfile: ws.passfile)
        let wrong = try ws.dir.write("wrong", "not the password\n")
        let result = try Programs.run(Programs.caid, ["mount", "--cipher", ws.path("c"), "--mountpoint", ws.path("m"), "--passfile", wrong])
        #expect(result.status == 12)
        #expect(result.stderr.contains("password does not open"))
        #expect(!GocryptfsTool.isMounted(ws.path("m")))
    }

    @Test func aRealLoaderReadsSafetensorsThroughTheMount() async throws {
        let ws = try Workspace()
        defer { ws.remove() }
        let plain = ws.path("model")
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        let script = """
            import numpy as np, sys
            from safetensors.numpy import save_file, load_file
            rng = np.random.default_rng(7)
            tensors = {"embed": rng.standard_normal((1024, 512), dtype=np.float32),
                        "bias": rng.standard_normal(4099).astype(np.float16),
                        "ids": np.arange(100003, dtype=np.int64)}
            if sys.argv[1] == "save":
                save_file(tensors, sys.argv[2])
            else:
                loaded = load_file(sys.argv[2])
                assert loaded.keys() == tensors.keys(), loaded.keys()
                for k in tensors:
                    assert loaded[k].dtype == tensors[k].dtype and np.array_equal(loaded[k], tensors[k]), k
                print("tensors equal")
            """
        let scriptPath = try ws.dir.write("model.py", script)
        try GocryptfsTool.run("/usr/bin/env", ["python3", scriptPath, "save", plain + "/model.safetensors"])
        try GocryptfsTool.run(Programs.caid, ["encrypt", "--plain", plain, "--cipher", ws.path("cipher"), "--passfile", ws.passfile])
        let mount = try await CaidMount(cipher: ws.path("cipher"), at: ws.path("mnt"), passfile: ws.passfile)
        let loaded = try Programs.run("/usr/bin/env", ["python3", scriptPath, "load", ws.path("mnt/model.safetensors")])
        #expect(loaded.status == 0, "\(loaded.stderr)")
        #expect(loaded.stdout.contains("tensors equal"))
        await mount.stop()
    }
}
