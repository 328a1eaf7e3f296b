import Foundation

/// A `caid mount` process, for tests that read through the real mount.
public final class CaidMount: @unchecked Sendable {
    public let mountpoint: String
    public let process: Programs.Running

    /// Starts `caid mount` and waits until it says it is ready.
    /// - Parameter directory: the working directory to start it in, for relative `cipher` and `mountpoint` paths.
    public init(cipher: String, at mountpoint: String, passfile: String, extra: [String] = [], in directory: String? = nil) async throws {
        let arguments = ["mount", "--cipher", cipher, "--mountpoint", mountpoint, "--passfile", passfile] + extra
        if let directory {
            self.mountpoint = mountpoint.hasPrefix("/") ? mountpoint : directory + "/" + mountpoint
            process = try Programs.start("/bin/sh", ["-c", "cd \"$1\" && shift && exec \"$@\"", "sh", directory, Programs.caid] + arguments)
        } else {
            self.mountpoint = mountpoint
            process = try Programs.start(Programs.caid, arguments)
        }
        do {
            try await process.waitForOutput("ready")
        } catch {
            throw GocryptfsTool.Failure(description: "caid mount did not get ready: \(error)")
        }
    }

    /// Stops it with SIGTERM; returns what it printed. Unmounts by force if it does not stop in time.
    @discardableResult
    public func stop() async -> Programs.Result? {
        process.signal(SIGTERM)
        let result = await process.wait(timeout: .seconds(10))
        if GocryptfsTool.isMounted(mountpoint) { GocryptfsTool.unmount(mountpoint) }
        return result
    }
}
