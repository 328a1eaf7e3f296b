import Foundation

/// Runs the built `caid` and other programs from tests.
public enum Programs {
    /// The directory of the test bundle, where SwiftPM also puts the `caid` it built.
    public static var buildDirectory: String {
        let executable = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var directory = executable.deletingLastPathComponent()
        // On Linux the test binary is `<build>/caidPackageTests.xctest`; elsewhere it may sit deeper in a bundle.
        while !FileManager.default.fileExists(atPath: directory.appendingPathComponent("caid").path), directory.path != "/" {
            directory = directory.deletingLastPathComponent()
        }
        return directory.path
    }

    /// A loopback TCP port nobody listens on, below the kernel's ephemeral range (32768 and up) so that no outgoing
    /// connection can be handed it meanwhile: for servers whose port must be fixed before they start.
    public static func unusedPort() -> Int {
        while true {
            let port = Int.random(in: 20000...32000)
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = UInt16(port).bigEndian
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            close(fd)
            if bound == 0 { return port }
        }
    }

    /// The built `caid` executable.
    public static var caid: String { buildDirectory + "/caid" }

    /// The root of the package (for files such as `etc/caid/cai.env.example`).
    public static var packageRoot: String {
        var url = URL(fileURLWithPath: #filePath)
        while !FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path), url.path != "/" {
            url = url.deletingLastPathComponent()
        }
        return url.path
    }

    /// What a finished program left.
    public struct Result: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    /// A minimal environment, so tests never leak this process's NOTIFY_SOCKET or similar into children.
    public static func environment(_ extra: [String: String] = [:]) -> [String: String] {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        var environment = ["PATH": path, "LANG": "C.UTF-8"]
        environment.merge(extra) { _, new in new }
        return environment
    }

    /// Starts a program with its output captured to files.
    public static func start(_ path: String, _ arguments: [String], environment: [String: String] = environment()) throws -> Running {
        try Running(path, arguments, environment: environment)
    }

    /// Runs a program to completion.
    public static func run(_ path: String, _ arguments: [String], environment: [String: String] = environment()) throws -> Result {
        let running = try start(path, arguments, environment: environment)
        return running.wait()
    }

    /// A started program (posix_spawn and waitpid: Foundation's Process loses the exit of programs that daemonize,
    /// such as gocryptfs).
    public final class Running: @unchecked Sendable {
        public let pid: pid_t
        private let outPath: String
        private let errPath: String
        private var result: Result?

        init(_ path: String, _ arguments: [String], environment: [String: String]) throws {
            let base = NSTemporaryDirectory() + "caid-proc-" + UUID().uuidString
            outPath = base + ".out"
            errPath = base + ".err"
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            let argv = ([path] + arguments).map { strdup($0) } + [nil]
            let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
            defer {
                argv.forEach { free($0) }
                envp.forEach { free($0) }
            }
            // The test process blocks signals on some threads (swift-testing, signal watchers); a child would inherit
            // that mask and never see SIGTERM. Start children with no blocked signals and default handlers.
            var attributes = posix_spawnattr_t()
            posix_spawnattr_init(&attributes)
            defer { posix_spawnattr_destroy(&attributes) }
            var none = sigset_t()
            sigemptyset(&none)
            var all = sigset_t()
            sigfillset(&all)
            posix_spawnattr_setsigmask(&attributes, &none)
            posix_spawnattr_setsigdefault(&attributes, &all)
            posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
            var child: pid_t = 0
            let status = posix_spawn(&child, path, &actions, &attributes, argv, envp)
            guard status == 0 else {
                throw CocoaError(.executableLoad, userInfo: [NSFilePathErrorKey: path, NSLocalizedDescriptionKey: String(cString: strerror(status))])
            }
            pid = child
        }

        deinit {
            if result == nil {
                kill(pid, SIGKILL)
                var status: Int32 = 0
                waitpid(pid, &status, 0)
            }
            try? FileManager.default.removeItem(atPath: outPath)
            try? FileManager.default.removeItem(atPath: errPath)
        }

        /// What it printed so far.
        public var stdout: String { (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "" }
        public var stderr: String { (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "" }

        /// Sends a signal.
        public func signal(_ number: Int32) { kill(pid, number) }

        /// Reaps the child if it has exited (or waits for it when `block`).
        private func reap(block: Bool) -> Result? {
            if let result { return result }
            var status: Int32 = 0
            let reaped = waitpid(pid, &status, block ? 0 : WNOHANG)
            guard reaped == pid else { return nil }
            // Exit status, or 128 + signal as shells report it.
            let code = status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
            result = Result(status: code, stdout: stdout, stderr: stderr)
            return result
        }

        /// What it left, if it has exited; `nil` while it runs.
        public func exited() -> Result? { reap(block: false) }

        /// Waits until it exits.
        public func wait() -> Result {
            while true {
                if let result = reap(block: true) { return result }
            }
        }

        /// Waits up to `timeout` for it to exit; kills it after that and returns `nil`.
        public func wait(timeout: Duration) async -> Result? {
            let deadline = ContinuousClock.now + timeout
            while ContinuousClock.now < deadline {
                if let result = reap(block: false) { return result }
                try? await Task.sleep(for: .milliseconds(20))
            }
            kill(pid, SIGKILL)
            _ = wait()
            return nil
        }
    }
}

/// A datagram socket that stands in for systemd's notification socket.
public final class NotifySocket: @unchecked Sendable {
    public let path: String
    private let fd: Int32

    public init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard fd >= 0, bound == 0 else { throw CocoaError(.fileWriteUnknown) }
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit {
        close(fd)
        unlink(path)
    }

    /// Receives datagrams until `predicate` holds for everything received so far, or `timeout` passes.
    public func receive(into messages: inout [String], timeout: Duration, until predicate: ([String]) -> Bool) {
        let deadline = ContinuousClock.now + timeout
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !predicate(messages), ContinuousClock.now < deadline {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { messages.append(String(decoding: buffer[0..<n], as: UTF8.self)) }
        }
    }
}
