import CaidBase
import CGNU
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The foundation's pure pieces: each written once, for every module.
@Suite struct FoundationTests {
    @Test func pathParentsAsDeletingLastPathComponentMeansThemWithoutItsTrap() {
        let cases: [(String, String)] = [
            ("/a/b", "/a"), ("/a/b/", "/a"), ("/a//b", "/a"), ("/a", "/"), ("/", "/"), ("//m", "/"),
            ("a/b", "a"), ("a", ""), ("m", ""), ("m/", ""), ("", ""), ("./m", "."),
        ]
        for (path, parent) in cases {
            let got = PathText.parent(of: path)
            #expect(got == parent, "parent of '\(path)'")
        }
        // Every walk up ends: at "/" for an absolute path, at "" for a relative one.
        for start in ["/x/y/z", "m/n", "m"] {
            var path = start, steps = 0
            while !path.isEmpty, path != "/", steps < 10 { path = PathText.parent(of: path); steps += 1 }
            #expect(steps < 10, "\(start)")
        }
        #expect(PathText.absolute("/abs") == "/abs")
        let relative = PathText.absolute("m")
        #expect(relative.hasPrefix("/") && relative.hasSuffix("/m"))
    }

    @Test func aRetryScheduleDoublesUpToItsCapAndEnds() {
        let plain = RetrySchedule(attempts: 5, firstDelay: .milliseconds(500), maximumDelay: .seconds(1), jitter: .none)
        #expect((1...5).map { plain.delay(after: $0, random: 0.9) } == [.milliseconds(500), .seconds(1), .seconds(1), .seconds(1), nil])
        let jittered = RetrySchedule(attempts: 3, firstDelay: .milliseconds(400), maximumDelay: .seconds(10), jitter: .full)
        #expect(jittered.delay(after: 2, random: 0.5) == .milliseconds(400))
        #expect(jittered.delay(after: 1, random: 0) == .zero)
        #expect(jittered.delay(after: 3, random: 0.5) == nil)
    }

    @Test func aThrottleAdmitsOneEventPerInterval() {
        var throttle = Throttle(interval: .seconds(1))
        let start = ContinuousClock.now
        let answers = [start, start + .milliseconds(999), start + .seconds(1), start + .milliseconds(1500)].map { throttle.admits(at: $0) }
        #expect(answers == [true, false, true, false])
    }

    @Test func base64URLIsStrictAboutEverythingButPadding() {
        let bytes: [UInt8] = [0xFB, 0xFF, 0x01]
        #expect(Base64URL.encode(bytes, padded: false) == "-_8B")
        #expect(Base64URL.encode([0xFB], padded: true) == "-w==")
        #expect(Base64URL.decodeEitherPadding("-w==") == [0xFB])
        #expect(Base64URL.decodeEitherPadding("-w") == [0xFB])
        #expect(Base64URL.decodeEitherPadding("-x") == nil, "non-zero trailing bits: two texts for one byte")
        #expect(Base64URL.decodeEitherPadding("+w") == nil, "the standard alphabet is not base64url")
    }

    @Test func fileIOReadsAndWritesWholeRangesAndStopsAtTheEnd() throws {
        let path = NSTemporaryDirectory() + "caid-fileio-\(getpid())"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        #expect(fd >= 0)
        defer { close(fd); unlink(path) }
        let bytes = (0..<10_000).map { UInt8(truncatingIfNeeded: $0) }
        try bytes.withUnsafeBytes { try FileIO.write(fd, $0, at: 100) }
        var back = [UInt8](repeating: 0, count: 20_000)
        let got = try back.withUnsafeMutableBytes { try FileIO.read(fd, into: $0, at: 100) }
        #expect(got == 10_000)
        #expect(Array(back[0..<got]) == bytes)
        #expect(throws: FileIO.Failure.self) {
            try back.withUnsafeMutableBytes { _ = try FileIO.read(-1, into: $0, at: 0) }
        }
    }

    @Test func blockingWorkRunsOnAThreadOfItsOwnAndItsErrorComesBack() async {
        let name = await Blocking.run { () -> String in
            var buffer = [CChar](repeating: 0, count: 16)
            _ = caid_thread_name(&buffer, buffer.count)
            return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        #expect(name == Blocking.threadName)
        struct Refused: Error {}
        await #expect(throws: Refused.self) { try await Blocking.run { () throws(Refused) -> Int in throw Refused() } }
    }
}
