import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Compares a volume, read back through caid's reader, with the plaintext directory it should hold.
public enum VolumeVerifier {
    /// Every difference found, one line each ("model/config.json: content differs at byte 4096"); empty when equal.
    /// Names, file contents, symlink targets, directory structure and permission bits are compared.
    public static func differences(volume: Volume, plainDirectory: String) throws(GocryptfsError) -> [String] {
        var found: [String] = []
        try compare(volume: volume, cipherDirectory: "", plain: plainDirectory, relative: "", into: &found)
        return found
    }

    private static func compare(
        volume: Volume, cipherDirectory: String, plain: String, relative: String, into found: inout [String]
    ) throws(GocryptfsError) {
        let (entries, skipped) = try volume.list(cipherDirectory)
        found += skipped
        let plainNames = Set(((try? FileManager.default.contentsOfDirectory(atPath: plain)) ?? []).map { Array($0.utf8) })
        let cipherNames = Set(entries.map(\.name))
        for missing in plainNames.subtracting(cipherNames) {
            found.append("\(join(relative, missing)): missing from the volume")
        }
        for extra in cipherNames.subtracting(plainNames) {
            found.append("\(join(relative, extra)): in the volume but not in \(plain)")
        }
        for entry in entries where plainNames.contains(entry.name) {
            let name = String(decoding: entry.name, as: UTF8.self)
            let path = join(relative, entry.name)
            let plainPath = plain + "/" + name
            let cipherPath = cipherDirectory.isEmpty ? entry.diskName : cipherDirectory + "/" + entry.diskName
            var plainInfo = stat(), cipherInfo = stat()
            lstat(plainPath, &plainInfo)
            lstat(volume.path(cipherPath), &cipherInfo)
            guard plainInfo.st_mode & S_IFMT == cipherInfo.st_mode & S_IFMT else {
                found.append("\(path): a different kind of entry")
                continue
            }
            switch plainInfo.st_mode & S_IFMT {
            case S_IFDIR:
                try compare(volume: volume, cipherDirectory: cipherPath, plain: plainPath, relative: path, into: &found)
            case S_IFLNK:
                let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: plainPath)).map { Array($0.utf8) }
                if try volume.readLink(cipherPath) != target { found.append("\(path): symlink target differs") }
                continue
            default:
                if let difference = try compareFile(volume.openFile(cipherPath), plainPath) {
                    found.append("\(path): \(difference)")
                }
            }
            if plainInfo.st_mode & 0o7777 != cipherInfo.st_mode & 0o7777 {
                found.append("\(path): mode \(String(cipherInfo.st_mode & 0o7777, radix: 8)), expected \(String(plainInfo.st_mode & 0o7777, radix: 8))")
            }
        }
    }

    private static func compareFile(_ file: CipherFile, _ plainPath: String) throws(GocryptfsError) -> String? {
        guard let handle = FileHandle(forReadingAtPath: plainPath) else { return "cannot read \(plainPath)" }
        defer { try? handle.close() }
        var offset: UInt64 = 0
        while true {
            let expected = Array((try? handle.read(upToCount: 1 << 20)) ?? Data())
            let actual = try file.read(offset: offset, count: 1 << 20)
            if expected != actual {
                let index = zip(expected, actual).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(expected.count, actual.count)
                return "content differs at byte \(offset + UInt64(index))"
            }
            if expected.isEmpty { return nil }
            offset += UInt64(expected.count)
        }
    }

    private static func join(_ relative: String, _ name: [UInt8]) -> String {
        let text = String(decoding: name, as: UTF8.self)
        return relative.isEmpty ? text : relative + "/" + text
    }
}
