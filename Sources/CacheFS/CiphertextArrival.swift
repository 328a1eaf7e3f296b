/// What a streaming mount asks of the download: whether a file's ciphertext is on disk yet. The mount serves a
/// block only once its bytes are there and authenticate; this only says when to look.
///
/// Implemented over the fetcher's ledger in `caid run` (CacheFS does not know the object store).
public protocol CiphertextArrival: Sendable {
    /// The current copy of the file at `path` (relative to the volume) while it is streamed or was streamed in this
    /// mount's life; nil for a file that was complete before the mount.
    func generation(of path: String) -> UInt64?

    /// Blocks the calling thread (a FUSE worker) until ciphertext bytes `range` of copy `generation` of `path` are on
    /// disk, asking for them first; bounded by the download's read timeout.
    /// - Returns: nil when they may be read, else why not (the read fails with EIO).
    func waitForCiphertext(_ path: String, range: Range<UInt64>, generation: UInt64) -> String?

    /// Ends the waits under way now (their reads fail): the mount is stopping.
    func releaseWaitingReads()
}
