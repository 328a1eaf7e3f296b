import CaidBase
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
    private let streaming: Streaming?
    private let handle: ServiceHandle

    /// A mount of a model still downloading: where reads wait, and what health says of the download.
    public struct Streaming: Sendable {
        public var arrival: any CiphertextArrival
        public var status: @Sendable () -> StreamingStatus

        public init(arrival: any CiphertextArrival, status: @escaping @Sendable () -> StreamingStatus) {
            self.arrival = arrival
            self.status = status
        }
    }

    /// - Parameters:
    ///   - ownership: who may read the plaintext (`CAID_MOUNT_OWNER`, `CAID_MOUNT_MODE`); the kernel enforces it
    ///     (`default_permissions`), so the mount is always `allow_other`.
    ///   - password: gives the volume password; the service wipes it once the volume is unlocked.
    ///   - verify: checks the ciphertext before each mount (for a fetched model: against the fetch's manifest).
    ///   - streaming: for a model still downloading (`CAID_MOUNT_STREAMING=on`).
    public init(
        cipherDirectory: String, mountpoint: String, options: FuseMount.Options = .init(), ownership: CacheFileSystem.Ownership = .default,
        password: @escaping @Sendable () async throws -> Secret, verify: @escaping @Sendable () async throws -> Void = {},
        streaming: Streaming? = nil, handle: ServiceHandle
    ) {
        self.verify = verify
        self.streaming = streaming
        self.ownership = ownership
        self.cipherDirectory = cipherDirectory
        self.mountpoint = mountpoint
        var options = options
        options.allowOther = true
        // Streaming reads block their FUSE worker until the bytes arrive; enough workers stay free for the rest.
        if streaming != nil { options.maxThreads = max(options.maxThreads, 32) }
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
        let fileSystem: CacheFileSystem
        do {
            fileSystem = try CacheFileSystem(volume: volume, ownership: ownership, arrival: streaming?.arrival, logger: handle.logger)
            mount = try FuseMount.mount(fileSystem, at: mountpoint, options: options, logger: handle.logger)
        } catch {
            throw ServiceFailure("\(error)")
        }
        await handle.running("mounted at \(mountpoint)")
        let streamingNote = streaming == nil ? "" : " while it downloads: reads of what has not arrived wait for it"
        handle.logger.notice("model mounted read-only at \(mountpoint)\(streamingNote)")
        if let streaming {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await mount.unmounted() }
                group.addTask { await report(streaming) }
                await group.next()
                group.cancelAll()
            }
        } else {
            await mount.unmounted()
        }
        let byOperator = !Task.isCancelled
        // Reads waiting for bytes would hold the FUSE workers, and so the unmount, until their timeout.
        fileSystem.stopWaiting()
        mount.unmount()
        if byOperator { throw ServiceFailure("\(mountpoint) was unmounted from outside caid; mounting again") }
        handle.logger.info("model unmounted from \(mountpoint)")
    }

    /// Publishes the download's progress while the mount runs, each change within a second.
    private func report(_ streaming: Streaming) async {
        var last: StreamingStatus?
        while !Task.isCancelled {
            let status = streaming.status()
            if status != last {
                await handle.registry.setStreaming(handle.name, status)
                await handle.progress("mounted at \(mountpoint); " + status.summary)
                last = status
            }
            try? await Task.sleep(for: .seconds(1))
        }
        await handle.registry.setStreaming(handle.name, nil)
    }
}
