import Foundation
import Gocryptfs

/// A fresh work area for a gocryptfs test, with a password file; removed with everything mounted in it.
public struct Workspace: Sendable {
    public let dir: TemporaryDirectory
    public let password = "caid-test-password ünï"
    public let passfile: String

    public init() throws {
        dir = try TemporaryDirectory("caid-gocryptfs")
        passfile = try dir.write("password", password)
    }

    public func path(_ name: String) -> String { dir.path + "/" + name }

    /// Unmounts whatever is mounted under the workspace, then removes it.
    public func remove() {
        if let mounts = try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8) {
            for line in mounts.split(separator: "\n") {
                let point = line.split(separator: " ").dropFirst().first.map(String.init) ?? ""
                if point.hasPrefix(dir.path) { GocryptfsTool.unmount(point) }
            }
        }
        dir.remove()
    }

    public func open(_ cipher: String) throws -> Volume {
        try Array(password.utf8).withUnsafeBytes { try Volume(root: cipher, password: $0) }
    }

    /// A ciphertext volume made by the real gocryptfs from a plaintext tree made by ``GocryptfsTool/makeTree``.
    public func gocryptfsVolume(flags: [String] = [], largeSize: Int, manyFiles: Int = 1000) throws -> (plain: String, cipher: String) {
        let plain = path("plain"), cipher = path("cipher"), mount = path("mnt")
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        try GocryptfsTool.makeTree(at: plain, largeSize: largeSize, manyFiles: manyFiles)
        try GocryptfsTool.initVolume(cipher, passfile: passfile, flags: flags)
        try GocryptfsTool.mount(cipher, at: mount, passfile: passfile)
        defer { GocryptfsTool.unmount(mount) }
        try GocryptfsTool.run("/bin/cp", ["-a", "--sparse=always", plain + "/.", mount + "/"])
        return (plain, cipher)
    }
}

