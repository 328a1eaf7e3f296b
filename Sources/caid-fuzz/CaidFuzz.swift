import CaidFuzzTargets
import Foundation

#if CAID_FUZZ
import CLibFuzzer
#endif

/// `caid-fuzz`. Built by scripts/fuzz.sh with `-sanitize=fuzzer,address -DCAID_FUZZ`, it is libFuzzer's driver
/// for the target named by `CAID_FUZZ_TARGET` (all its arguments are libFuzzer's). Built normally, it replays
/// inputs through a target (`caid-fuzz replay <target> <file|dir>...`), lists the targets, or writes the
/// generated seeds (`caid-fuzz seeds <corpus dir>`).
///
/// SwiftPM links an executable with `--defsym main=caid_fuzz_main`, which replaces libFuzzer's own `main`, so the
/// fuzzing build enters here too and starts libFuzzer through `LLVMFuzzerRunDriver`.
@main
struct CaidFuzz {
    static func main() {
        #if CAID_FUZZ
        let environment = ProcessInfo.processInfo.environment
        if environment["CAID_FUZZ_LIST"] != nil { list() }
        guard selectedTarget != nil else {
            fail("set CAID_FUZZ_TARGET to one of: \(FuzzTarget.all.map(\.name).joined(separator: ", "))")
        }
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in
            selectedTarget?.run(UnsafeRawBufferPointer(start: data, count: size))
            return 0
        })
        #else
        let arguments = Array(CommandLine.arguments.dropFirst())
        switch arguments.first {
        case "list": list()
        case "replay" where arguments.count >= 3: replay(target: arguments[1], paths: Array(arguments.dropFirst(2)))
        case "seeds" where arguments.count == 2: writeSeeds(into: arguments[1])
        default: fail("usage: caid-fuzz list | replay <target> <file|dir>... | seeds <corpus dir>")
        }
        #endif
    }

    static func list() -> Never {
        for target in FuzzTarget.all { print(target.name, target.maxLength) }
        exit(0)
    }

    static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("caid-fuzz: \(message)\n".utf8))
        exit(2)
    }

    static func replay(target name: String, paths: [String]) {
        guard let target = FuzzTarget.named(name) else { fail("no target '\(name)'") }
        var count = 0
        for path in paths {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { fail("\(path) does not exist") }
            let files = isDirectory.boolValue
                ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { "\(path)/\($0)" } : [path]
            for file in files {
                guard let data = FileManager.default.contents(atPath: file) else { fail("cannot read \(file)") }
                target.run(Array(data))
                count += 1
            }
        }
        print("\(name): \(count) inputs, no crash")
    }

    static func writeSeeds(into directory: String) {
        do {
            for seed in try FuzzSeeds.generated() {
                let folder = "\(directory)/\(seed.target)"
                try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
                try Data(seed.bytes).write(to: URL(fileURLWithPath: "\(folder)/gen-\(seed.name)"))
                print("\(folder)/gen-\(seed.name): \(seed.bytes.count) bytes")
            }
        } catch {
            fail("cannot write the seeds: \(error)")
        }
    }
}

#if CAID_FUZZ
/// The target libFuzzer's callback runs (a C function pointer cannot capture it).
let selectedTarget = ProcessInfo.processInfo.environment["CAID_FUZZ_TARGET"].flatMap(FuzzTarget.named)
#endif
