import CaidCore
import Gocryptfs
import Logging
import ServiceLifecycle

/// The `cachefs` service of `caid run`: mounts the verified ciphertext read-only at `MODEL_MOUNT_POINT` with the
/// password the key service obtained, runs until stopped, unmounts and drops the keys.
public struct MountService: Service {
    private let cipherDirectory: String
    private let mountpoint: String
    private let options: FuseMount.Options
    private let ownership: CacheFileSystem.Ownership
    private let password: @Sendable () async throws -> Secret
    private let verify: @Sendable () async throws -> Void
    private let handle: ServiceHandle

    /// - Parameters:
    ///   - ownership: who may read the plaintext (`CAID_MOUNT_OWNER`, `CAID_MOUNT_MODE`); the kernel enforces it
    ///     (`default_permissions`), so the mount is always `allow_other`.
    ///   - password: gives the volume password; the service wipes it once the volume is unlocked.
    ///   - verify: checks the ciphertext before each mount (for a fetched model: against the fetch's manifest).
    public init(
        cipherDirectory: String, mountpoint: String, options: FuseMount.Options = .init(), ownership: CacheFileSystem.Ownership = .default,
        password: @escaping @Sendable () async throws -> Secret, verify: @escaping @Sendable () async throws -> Void = {},
        handle: ServiceHandle
    ) {
        self.verify = verify
        self.ownership = ownership
        self.cipherDirectory = cipherDirectory
        self.mountpoint = mountpoint
        var options = options
        options.allowOther = true
        self.options = options
        self.password = password
        self.handle = handle
    }

    public func run() async throws {
        // Before the password is taken: a damaged cache is a wait for the fetch, not a reason to fetch a key.
        try await verify()
        let secret = try await password()
        let volume: Volume
        do {
            // A downloaded model has no holes: an all-zero block is an overwrite, refused (EIO) like any bad block.
            volume = try secret.withBytes { try Volume(root: cipherDirectory, password: $0, refusesHoles: true) }
            secret.wipe()
        } catch {
            secret.wipe()
            // A wrong password or an unreadable format does not fix itself; damaged or missing files may (a new fetch).
            let code = (error as? GocryptfsError)?.code
            let permanent = code == .wrongPassword || code == .unsupportedFeature
            throw ServiceFailure("cannot open the model volume \(cipherDirectory): \(error)", permanent: permanent)
        }
        let mount: FuseMount
        do {
            mount = try FuseMount.mount(CacheFileSystem(volume: volume, ownership: ownership, logger: handle.logger), at: mountpoint, options: options, logger: handle.logger)
        } catch {
            throw ServiceFailure("\(error)")
        }
        await handle.running("mounted at \(mountpoint)")
        handle.logger.notice("model mounted read-only at \(mountpoint)")
        await mount.unmounted()
        let byOperator = !Task.isCancelled
        mount.unmount()
        if byOperator { throw ServiceFailure("\(mountpoint) was unmounted from outside caid; mounting again") }
        handle.logger.info("model unmounted from \(mountpoint)")
    }
}
