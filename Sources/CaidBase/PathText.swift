import Foundation

/// Path arithmetic on strings for the places that walk up a path. swift-corelibs-foundation of Swift 6.3.1 traps in
/// `NSString.deletingLastPathComponent` on a relative path of one one-character component ("m", "m/"), which
/// `caid mount --mountpoint m` reached. Where a path may come from the command line, caid uses this instead (the
/// remaining calls take paths the configuration has checked to be absolute).
public enum PathText {
    /// The directory part of `path`, as `deletingLastPathComponent` means it: "/a" for "/a/b" and "/a/b/", "/" for
    /// "/a" and "/", "a" for "a/b", and "" for a relative path of one component.
    public static func parent(of path: String) -> String {
        var trimmed = Substring(path)
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return "" }
        var head = trimmed[..<slash]
        while head.hasSuffix("/") { head = head.dropLast() }
        return head.isEmpty ? "/" : String(head)
    }

    /// `path` against the working directory when it is relative; as it is when absolute.
    public static func absolute(_ path: String) -> String {
        guard !path.hasPrefix("/") else { return path }
        let directory = FileManager.default.currentDirectoryPath
        return path.isEmpty ? directory : (directory.hasSuffix("/") ? directory : directory + "/") + path
    }
}
