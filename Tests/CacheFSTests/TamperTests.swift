import CaidTestSupport
import Foundation
import Gocryptfs
import Testing

/// Damaged ciphertext through the caid mount: an error for what was touched, the right bytes for the rest.
@Suite(.serialized) struct TamperTests {
    static let block = 4096
    static let cipherBlock = 4128

    /// A volume with a five-block file, a three-block file, a subdirectory and a long name.
    struct Fixture {
        let ws: Workspace
        let cipher: String
        let plain: String
        let volume: Volume

        init() throws {
            ws = try Workspace()
            plain = ws.path("plain")
            cipher = ws.path("cipher")
            let fm = FileManager.default
            try fm.createDirectory(atPath: plain + "/sub", withIntermediateDirectories: true)
            try Data((0..<(5 * TamperTests.block)).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) }).write(to: URL(fileURLWithPath: plain + "/multi.bin"))
            try Data((0..<(3 * TamperTests.block)).map { UInt8(truncatingIfNeeded: $0 * 3 + 2) }).write(to: URL(fileURLWithPath: plain + "/other.bin"))
            try Data("alpha\n".utf8).write(to: URL(fileURLWithPath: plain + "/sub/a.txt"))
            try Data("beta\n".utf8).write(to: URL(fileURLWithPath: plain + "/sub/b.txt"))
            try Data("long\n".utf8).write(to: URL(fileURLWithPath: plain + "/" + GocryptfsTool.name176))
            try GocryptfsTool.initVolume(cipher, passfile: ws.passfile)
            let writable = ws.path("w")
            try GocryptfsTool.mount(cipher, at: writable, passfile: ws.passfile)
            do {
                try GocryptfsTool.run("/bin/cp", ["-a", plain + "/.", writable + "/"])
            } catch {
                GocryptfsTool.unmount(writable)
                throw error
            }
            GocryptfsTool.unmount(writable)
            volume = try ws.open(cipher)
        }

        func diskPath(_ plainPath: String) throws -> String {
            var directory = ""
            for component in plainPath.split(separator: "/") {
                let name = try volume.diskName(of: Array(component.utf8), in: directory)
                directory = directory.isEmpty ? name : directory + "/" + name
            }
            return volume.path(directory)
        }

        func plainBytes(_ path: String, block: Int) throws -> [UInt8] {
            let data = try Data(contentsOf: URL(fileURLWithPath: plain + "/" + path))
            return Array(data[(block * TamperTests.block)..<((block + 1) * TamperTests.block)])
        }
    }

    static func flip(_ path: String, at offset: Int) throws {
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(offset))
        let byte = try handle.read(upToCount: 1)?.first ?? 0
        try handle.seek(toOffset: UInt64(offset))
        try handle.write(contentsOf: Data([byte ^ 0x5A]))
    }

    static func cipherBlockRange(_ number: Int) -> Range<Int> {
        let start = 18 + number * cipherBlock
        return start..<(start + cipherBlock)
    }

    /// Reads one plaintext block through the mount with pread; `nil` and the errno when it fails.
    static func readBlock(_ path: String, _ number: Int) -> (bytes: [UInt8]?, errno: Int32) {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return (nil, errno) }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: block)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, block, off_t(number * block)) }
        return n < 0 ? (nil, errno) : (Array(buffer[0..<n]), 0)
    }

    func withMount(_ fixture: Fixture, extra: [String] = [], _ body: (String) async throws -> Void) async throws -> String {
        let mount = try await CaidMount(cipher: fixture.cipher, at: fixture.ws.path("m"), passfile: fixture.ws.passfile, extra: extra)
        do {
            try await body(fixture.ws.path("m"))
        } catch {
            await mount.stop()
            throw error
        }
        return await mount.stop()?.stderr ?? ""
    }

    static func zero(_ path: String, range: Range<Int>) throws {
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(range.lowerBound))
        try handle.write(contentsOf: Data(count: range.count))
    }

    /// An all-zero ciphertext block: gocryptfs's own mount reads it as a hole of zeros, and so does `caid mount` by
    /// default (a local volume may be sparse); with --refuse-holes it is EIO, as in `caid run` (MountServiceTests).
    @Test func anAllZeroBlockIsAHoleOnlyWhereHolesAreAllowed() async throws {
        let f = try Fixture()
        defer { f.ws.remove() }
        try Self.zero(try f.diskPath("multi.bin"), range: Self.cipherBlockRange(2))
        let zeros = [UInt8](repeating: 0, count: Self.block)
        try GocryptfsTool.mount(f.cipher, at: f.ws.path("g"), passfile: f.ws.passfile, readOnly: true)
        let reference = Self.readBlock(f.ws.path("g") + "/multi.bin", 2)
        GocryptfsTool.unmount(f.ws.path("g"))
        #expect(reference.bytes == zeros, "gocryptfs reads an all-zero block as zeros")
        _ = try await withMount(f) { m in
            #expect(Self.readBlock(m + "/multi.bin", 2).bytes == zeros)
        }
        let intact = try f.plainBytes("multi.bin", block: 3)
        let log = try await withMount(f, extra: ["--refuse-holes"]) { m in
            #expect(Self.readBlock(m + "/multi.bin", 2).errno == EIO)
            #expect(Self.readBlock(m + "/multi.bin", 3).bytes == intact)
        }
        #expect(log.contains("all zeros"))
    }

    @Test func aFlippedContentByteFailsOnlyItsBlock() async throws {
        let f = try Fixture()
        defer { f.ws.remove() }
        try Self.flip(try f.diskPath("multi.bin"), at: Self.cipherBlockRange(2).lowerBound + 100)
        let log = try await withMount(f) { m in
            for number in [0, 1, 3, 4] {
                let expected = try f.plainBytes("multi.bin", block: number)
                #expect(Self.readBlock(m + "/multi.bin", number).bytes == expected, "block \(number)")
            }
            let bad = Self.readBlock(m + "/multi.bin", 2)
            #expect(bad.bytes == nil && bad.errno == EIO)
            let expected = try f.plainBytes("other.bin", block: 1)
                #expect(Self.readBlock(m + "/other.bin", 1).bytes == expected)
        }
        #expect(log.contains("block 2 fails authentication"))
        #expect(log.contains(try f.diskPath("multi.bin")))
    }

    @Test(arguments: [0, 9])
    func aDamagedHeaderFailsItsFileOnly(offset: Int) async throws {
        let f = try Fixture()
        defer { f.ws.remove() }
        try Self.flip(try f.diskPath("multi.bin"), at: offset)
        let log = try await withMount(f) { m in
            #expect(Self.readBlock(m + "/multi.bin", 0).errno == EIO)
            let expected = try f.plainBytes("other.bin", block: 0)
                #expect(Self.readBlock(m + "/other.bin", 0).bytes == expected)
        }
        #expect(log.contains(offset == 0 ? "version" : "fails authentication"))
    }

    @Test func swappedBlocksFailWithinAFileAndAcrossFiles() async throws {
        let f = try Fixture()
        defer { f.ws.remove() }
        let multi = try f.diskPath("multi.bin"), other = try f.diskPath("other.bin")
        var data = try Data(contentsOf: URL(fileURLWithPath: multi))
        let one = data[Self.cipherBlockRange(1)], three = data[Self.cipherBlockRange(3)]
        data.replaceSubrange(Self.cipherBlockRange(1), with: three)
        data.replaceSubrange(Self.cipherBlockRange(3), with: one)
        // Block 4 of multi.bin replaced by block 2 of other.bin (same position would need the same file ID).
        let otherData = try Data(contentsOf: URL(fileURLWithPath: other))
        data.replaceSubrange(Self.cipherBlockRange(4), with: otherData[Self.cipherBlockRange(2)])
        try data.write(to: URL(fileURLWithPath: multi))
        _ = try await withMount(f) { m in
            for number in [1, 3, 4] { #expect(Self.readBlock(m + "/multi.bin", number).errno == EIO, "block \(number)") }
            for number in [0, 2] {
                let expected = try f.plainBytes("multi.bin", block: number)
                #expect(Self.readBlock(m + "/multi.bin", number).bytes == expected, "block \(number)")
            }
        }
    }

    @Test func aDamagedNameHidesOnlyThatEntry() async throws {
        let f = try Fixture()
        defer { f.ws.remove() }
        let original = try f.diskPath("sub/a.txt")
        let directory = (original as NSString).deletingLastPathComponent
        let name = (original as NSString).lastPathComponent
        // Change one character so that the name no longer decrypts (checked with caid's reader).
        var damaged = name
        for (index, replacement) in zip(name.indices, ["A", "B", "C", "D"]) {
            var candidate = name
            candidate.replaceSubrange(index...index, with: candidate[index] == Character(replacement) ? "E" : replacement)
            let iv = try Array(Data(contentsOf: URL(fileURLWithPath: directory + "/gocryptfs.diriv")))
            if (try? f.volume.names.decrypt(candidate, iv: iv)) == nil { damaged = candidate; break }
        }
        try FileManager.default.moveItem(atPath: original, toPath: directory + "/" + damaged)
        let log = try await withMount(f) { m in
            let listing = try FileManager.default.contentsOfDirectory(atPath: m + "/sub")
            let content = try String(contentsOfFile: m + "/sub/b.txt", encoding: .utf8)
            #expect(listing == ["b.txt"])
            #expect(content == "beta\n")
        }
        #expect(log.contains("invalid entry skipped") && log.contains(damaged))
    }

    @Test func aDamagedLongNameFileHidesOnlyThatEntry() async throws {
        let f = try Fixture()
        defer { f.ws.remove() }
        let entry = try f.diskPath(GocryptfsTool.name176)
        try Self.flip(entry + ".name", at: 10)
        let log = try await withMount(f) { m in
            let names = Set(try FileManager.default.contentsOfDirectory(atPath: m))
            #expect(names == ["multi.bin", "other.bin", "sub"])
        }
        #expect(log.contains(".name"))
    }

    @Test func aDamagedDirIVFailsThatDirectoryOnly() async throws {
        let f = try Fixture()
        defer { f.ws.remove() }
        try Self.flip(try f.diskPath("sub") + "/gocryptfs.diriv", at: 3)
        _ = try await withMount(f) { m in
            #expect((try? FileManager.default.contentsOfDirectory(atPath: m + "/sub"))?.isEmpty ?? true)
            #expect(!FileManager.default.fileExists(atPath: m + "/sub/a.txt"))
            let expected = try f.plainBytes("multi.bin", block: 0)
                #expect(Self.readBlock(m + "/multi.bin", 0).bytes == expected)
        }
    }
}
