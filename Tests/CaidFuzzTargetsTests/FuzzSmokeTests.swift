import CaidFuzzTargets
import Foundation
import Testing

/// The fuzz targets without libFuzzer: every committed corpus input (seeds and the inputs of crashes found and
/// fixed) and a few thousand seeded mutations of them go through the same functions scripts/fuzz.sh fuzzes. A
/// regression that traps takes the test process down, so this fails loudly.
@Suite struct FuzzSmokeTests {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fuzz/corpus")

    static func inputs(of target: String) -> [[UInt8]] {
        let folder = corpus.appendingPathComponent(target)
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []).sorted()
        return names.compactMap { FileManager.default.contents(atPath: folder.appendingPathComponent($0).path).map(Array.init) }
    }

    @Test func everyTargetHasItsKeysAndASeedCorpus() {
        #expect(FuzzTarget.keysReady)
        #expect(Set(FuzzTarget.all.map(\.name)).count == FuzzTarget.all.count)
        for target in FuzzTarget.all {
            #expect(!Self.inputs(of: target.name).isEmpty, "Fuzz/corpus/\(target.name) has no seeds")
        }
    }

    /// The generated seeds pass every check of their parser (decrypt, verify), so fuzzing starts past the checks.
    @Test func generatedSeedsAreAccepted() throws {
        #expect(try FuzzSeeds.notAccepted() == [])
    }

    @Test(arguments: FuzzTarget.all.map(\.name))
    func corpusAndMutationsDoNotCrash(_ name: String) throws {
        let target = try #require(FuzzTarget.named(name))
        let seeds = Self.inputs(of: name)
        try #require(!seeds.isEmpty)
        for seed in seeds { target.run(seed) }
        // Deterministic, so a failure reproduces: the seed of the generator is the target's name.
        var random = SplitMix64(seed: name.utf8.reduce(0x9E37_79B9) { $0 &* 31 &+ UInt64($1) })
        for round in 0..<300 {
            var bytes = seeds[round % seeds.count]
            for _ in 0...Int(random.next() % 8) { mutate(&bytes, &random, maxLength: target.maxLength) }
            target.run(bytes)
        }
    }

    /// libFuzzer's basic mutations: change, insert, erase, duplicate a span, truncate.
    func mutate(_ bytes: inout [UInt8], _ random: inout SplitMix64, maxLength: Int) {
        func pick(_ bound: Int) -> Int { bound <= 0 ? 0 : Int(random.next() % UInt64(bound)) }
        switch random.next() % 6 {
        case 0 where !bytes.isEmpty: bytes[pick(bytes.count)] = UInt8(truncatingIfNeeded: random.next())
        case 1 where bytes.count < maxLength: bytes.insert(UInt8(truncatingIfNeeded: random.next()), at: pick(bytes.count + 1))
        case 2 where !bytes.isEmpty: bytes.remove(at: pick(bytes.count))
        case 3 where !bytes.isEmpty:
            let start = pick(bytes.count)
            let span = bytes[start..<min(bytes.count, start + 1 + pick(16))]
            if bytes.count + span.count <= maxLength { bytes.insert(contentsOf: Array(span), at: pick(bytes.count + 1)) }
        case 4 where !bytes.isEmpty: bytes.removeLast(pick(bytes.count))
        default:
            // An interesting byte where parsers branch.
            if !bytes.isEmpty { bytes[pick(bytes.count)] = [0x00, 0xFF, 0x7F, 0x80, 0x3C, 0x3E, 0x22, 0x5C, 0x3A, 0x0A][pick(10)] }
        }
    }
}

struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
