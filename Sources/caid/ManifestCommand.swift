import ArgumentParser
import Foundation
import ObjectStore
import OSSProtocol

/// `caid manifest`: the model manifest of an existing ciphertext directory (a volume made by gocryptfs itself), and
/// the writer `caid encrypt` uses for its own.
struct ManifestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "manifest",
        abstract: "Write the model manifest of a gocryptfs ciphertext directory and print the model digest.",
        discussion: """
            Lists every file of the ciphertext directory (gocryptfs.conf and the gocryptfs.diriv files included) \
            with its size and SHA-256 into <dir>.caid-manifest.json beside the directory, in canonical JSON. Its \
            SHA-256, printed as 'model digest: sha256:…', is the model's identity: register it with Trustee as a \
            reference value, and upload the manifest beside the model's prefix (models:/qwen: the object \
            qwen.caid-manifest.json). caid encrypt does this itself. The password is \
            not needed: only ciphertext is read. Exit status: 0 written, 1 failed.
            """
    )

    @Option(help: ArgumentHelp("The ciphertext directory (the one holding gocryptfs.conf).", valueName: "dir"))
    var cipher: String

    func run() throws {
        do {
            let (manifest, skipped) = try ManifestWriter.write(cipherDirectory: cipher)
            for path in skipped { printError("caid manifest: warning: \(path) is not a regular file; an OSS bucket cannot hold it, so it is not in the manifest") }
            print("wrote \(ManifestWriter.path(of: cipher)): \(manifest.objects.count) objects; upload it beside the model's prefix as <prefix>.\(ModelManifest.fileName)")
            print("model digest: \(manifest.digest)")
        } catch {
            printError("caid manifest: \(error)")
            throw ExitCode.failure
        }
    }
}

/// Walks a ciphertext directory, hashes every file, and writes the manifest beside `gocryptfs.conf`.
enum ManifestWriter {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// - Returns: the manifest, and the entries left out of it (symbolic links: OSS holds files only).
    static func write(cipherDirectory root: String) throws -> (manifest: ModelManifest, skipped: [String]) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root + "/gocryptfs.conf", isDirectory: &isDirectory), !isDirectory.boolValue else {
            throw Failure(description: "\(root)/gocryptfs.conf is missing: \(root) is not a gocryptfs ciphertext directory")
        }
        var objects: [ModelManifest.Object] = []
        var skipped: [String] = []
        try scan(root: root, relative: "", into: &objects, skipped: &skipped)
        let manifest = try ModelManifest(objects: objects)
        let target = path(of: root)
        let staging = target + ".tmp"
        guard FileManager.default.createFile(atPath: staging, contents: Data(manifest.canonicalBytes)) else {
            throw Failure(description: "cannot write \(staging)")
        }
        guard rename(staging, target) == 0 else {
            unlink(staging)
            throw Failure(description: "cannot move \(staging) into place: \(String(cString: strerror(errno)))")
        }
        return (manifest, skipped)
    }

    /// `qwen-cipher.caid-manifest.json` for `qwen-cipher/`.
    static func path(of cipherDirectory: String) -> String {
        ModelManifest.location(beside: cipherDirectory)
    }

    /// Files by their path relative to `root`, bytewise order of the walk not mattering (the manifest sorts).
    private static func scan(root: String, relative: String, into objects: inout [ModelManifest.Object], skipped: inout [String]) throws {
        let directory = relative.isEmpty ? root : root + "/" + relative
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw Failure(description: "cannot list \(directory): \(error.localizedDescription)")
        }
        for name in names {
            let path = directory + "/" + name
            let key = relative.isEmpty ? name : relative + "/" + name
            var info = stat()
            guard lstat(path, &info) == 0 else { throw Failure(description: "cannot stat \(path): \(String(cString: strerror(errno)))") }
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                try scan(root: root, relative: key, into: &objects, skipped: &skipped)
            case S_IFREG:
                objects.append(ModelManifest.Object(name: key, size: UInt64(info.st_size), sha256: try Fetcher.sha256(ofFileAt: path)))
            default:
                // gocryptfs keeps symlinks as symlinks (their targets encrypted); OSS holds none, so the bucket
                // never lists them and the manifest need not either.
                skipped.append(path)
            }
        }
    }
}
