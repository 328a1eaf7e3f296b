/// What the manifest remembers of a cached file once its CRC-64 matched OSS's: enough to see, without reading it
/// again, that the file was rewritten, truncated or swapped with another by a rename since. gocryptfs cannot see a
/// whole ciphertext file put under another name (each file authenticates only against its own header); the
/// manifest can.
///
/// The change time is the one a user cannot set back (`utimensat` sets only access and modification times), and a
/// rename or a write updates it, so a file whose stamp still matches is the one that was verified.
public struct FileStamp: Sendable, Equatable, Codable {
    public var device: UInt64
    public var inode: UInt64
    public var size: UInt64
    /// Modification and change times, in nanoseconds since the epoch.
    public var modified: Int64
    public var changed: Int64

    package init(device: UInt64, inode: UInt64, size: UInt64, modified: Int64, changed: Int64) {
        self.device = device
        self.inode = inode
        self.size = size
        self.modified = modified
        self.changed = changed
    }
}
