import ArgumentParser
import CaidBase
import Dispatch
import Foundation
import Gocryptfs
import ObjectStore
import OSSProtocol
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

struct EncryptCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encrypt",
        abstract: "Encrypt a model directory into a new gocryptfs v2 volume, without FUSE.",
        discussion: """
            Writes the same format as 'gocryptfs -init' with default flags, so the volume opens with gocryptfs as \
            well as with caid. The cipher directory must be new or empty; the volume is written beside it and moved \
            into place only when complete. It writes the model manifest (<cipher>.caid-manifest.json, see caid manifest) and \
            prints the model digest. Exit status: 0 done, 1 failed, 130 interrupted (nothing left behind).
            """
    )

    @Option(help: ArgumentHelp("The plaintext model directory.", valueName: "dir"))
    var plain: String

    @Option(help: ArgumentHelp("The cipher directory to create (new or empty).", valueName: "dir"))
    var cipher: String

    @OptionGroup var passfile: PassfileOption

    @Flag(help: "Read the written volume back through caid's reader and compare it with the plain directory.")
    var verify = false

    @Option(help: ArgumentHelp("scrypt cost N (a power of two); gocryptfs's default is 65536.", valueName: "n"))
    var scryptN = 65536

    @Option(help: ArgumentHelp("Worker threads (default: one per core).", valueName: "n"))
    var jobs = ProcessInfo.processInfo.activeProcessorCount

    func run() throws {
        let password = try passfile.read()
        defer { password.wipe() }
        let total = DirectorySize.bytes(plain)
        let progress = ProgressMeter(label: "encrypting", total: total)
        let interrupted = Mutex(false)
        let signals = SignalWatch([SIGINT, SIGTERM]) { interrupted.withLock { $0 = true } }
        defer { signals.cancel() }

        var options = VolumeWriter.Options()
        options.scryptN = scryptN
        options.parallelism = max(1, jobs)
        options.creator = "caid encrypt"
        let started = ContinuousClock.now
        let summary: VolumeWriter.Summary
        do {
            summary = try password.withBytes { bytes in
                try VolumeWriter(options: options).encrypt(
                    plainDirectory: plain, cipherDirectory: cipher, password: bytes,
                    progress: { progress.add($0) }, isCancelled: { interrupted.withLock { $0 } })
            }
        } catch {
            progress.finish()
            if interrupted.withLock({ $0 }) {
                printError("caid encrypt: interrupted; nothing was left at \(cipher)")
                throw ExitCode(130)
            }
            printError("caid encrypt: \(error)")
            throw ExitCode.failure
        }
        progress.finish()
        for line in summary.skipped { printError("caid encrypt: warning: \(line)") }
        let elapsed = (ContinuousClock.now - started).components
        let seconds = Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
        print("encrypted \(summary.files) files, \(summary.directories) directories, \(summary.symlinks) symlinks, "
            + "\(ByteCount(summary.bytes)) in \(String(format: "%.1f", seconds)) s into \(cipher)")
        do {
            // The model's identity, before anyone holds its key: what the owner registers with Trustee.
            let (manifest, skipped) = try ManifestWriter.write(cipherDirectory: cipher)
            if !skipped.isEmpty {
                printError("caid encrypt: warning: \(skipped.count) symbolic links are not in the model manifest: an OSS bucket cannot hold them, so a model served from OSS has none")
            }
            print("model digest: \(manifest.digest) (\(ManifestWriter.path(of: cipher)), \(manifest.objects.count) objects; upload it beside the model's prefix as <prefix>.\(ModelManifest.fileName))")
        } catch {
            printError("caid encrypt: \(error)")
            throw ExitCode.failure
        }

        if verify {
            do {
                let volume = try password.withBytes { try Volume(root: cipher, password: $0) }
                let differences = try VolumeVerifier.differences(volume: volume, plainDirectory: plain)
                guard differences.isEmpty else {
                    for line in differences { printError("caid encrypt: verify: \(line)") }
                    throw ExitCode.failure
                }
                print("verified: the volume reads back identical to \(plain)")
            } catch let error as GocryptfsError {
                printError("caid encrypt: verify: \(error)")
                throw ExitCode.failure
            }
        }
    }
}

/// The `--passfile` option, read as gocryptfs's `-passfile` reads it: the bytes, less one trailing newline.
struct PassfileOption: ParsableArguments {
    @Option(help: ArgumentHelp("A file holding the password; one trailing newline is ignored, as gocryptfs does.", valueName: "file"))
    var passfile: String

    /// The password, read straight into memory that is wiped (no intermediate `Data` or `String`).
    func read() throws -> Secret {
        let fd = open(passfile, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            printError("\(passfile): cannot be read (\(String(cString: strerror(errno)))); pass the password file with --passfile")
            throw ExitCode(66)
        }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 4096)
        defer { wipeBytes(&bytes) }
        let read = bytes.withUnsafeMutableBytes { buffer in Result { () throws(FileIO.Failure) in try FileIO.read(fd, into: buffer) } }
        var count: Int
        switch read {
        case .success(let filled):
            count = filled
        case .failure(let error):
            printError("\(passfile): cannot be read (\(error)); pass the password file with --passfile")
            throw ExitCode(66)
        }
        var extra: UInt8 = 0
        guard count < bytes.count || Glibc.read(fd, &extra, 1) == 0 else {
            printError("\(passfile): longer than \(bytes.count) bytes; is it the right file?")
            throw ExitCode(65)
        }
        if count > 0, bytes[count - 1] == UInt8(ascii: "\n") { count -= 1 }
        guard count > 0 else {
            printError("\(passfile): the password is empty")
            throw ExitCode(65)
        }
        return Secret(bytes[0..<count])
    }
}

/// Watches signals on a dispatch queue while work runs on the caller's thread.
final class SignalWatch {
    private let sources: [any DispatchSourceSignal]

    init(_ numbers: [Int32], handler: @escaping @Sendable () -> Void) {
        sources = numbers.map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler(handler: handler)
            source.resume()
            return source
        }
    }

    func cancel() {
        for source in sources { source.cancel() }
    }
}

/// The total size of the regular files below a directory.
enum DirectorySize {
    static func bytes(_ path: String) -> UInt64 {
        guard let walker = FileManager.default.enumerator(atPath: path) else { return 0 }
        var total: UInt64 = 0
        while let relative = walker.nextObject() as? String {
            var info = stat()
            if lstat(path + "/" + relative, &info) == 0, info.st_mode & S_IFMT == S_IFREG { total += UInt64(info.st_size) }
        }
        return total
    }
}
