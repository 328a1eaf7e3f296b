import Foundation
import Synchronization

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
    /// `CAID_TEST_PORTS=LOW-HIGH` narrows the range: scripts/test.sh gives each of its parallel lanes its own, so that
    /// two lanes never pick the same port between its check here and its use.
    public static func unusedPort() -> Int {
        let range = portRange
        while true {
            let port = Int.random(in: range)
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

    private static let portRange: ClosedRange<Int> = {
        let parts = (ProcessInfo.processInfo.environment["CAID_TEST_PORTS"] ?? "").split(separator: "-").compactMap { Int($0) }
        guard parts.count == 2, 1024 <= parts[0], parts[0] < parts[1], parts[1] < 32768 else { return 20000...32000 }
        return parts[0]...parts[1]
    }()

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
    /// such as gocryptfs). A thread of its own waits for the exit, so that waits for it are events, not polls.
    public final class Running: @unchecked Sendable {
        public let pid: pid_t
        /// The files its standard output and error go to (they exist from the start).
        public let outPath: String
        public let errPath: String
        private let exitWatch: ExitWatch
        private let cached = Mutex<Result?>(nil)

        /// Which output to wait on.
        public enum Stream: Sendable { case stdout, stderr }

        init(_ path: String, _ arguments: [String], environment: [String: String]) throws {
            let base = NSTemporaryDirectory() + "caid-proc-" + UUID().uuidString
            outPath = base + ".out"
            errPath = base + ".err"
            // Made here, not by the child, so that a wait can watch them from the start.
            for file in [outPath, errPath] {
                let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
                guard fd >= 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: file]) }
                close(fd)
            }
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_TRUNC, 0o600)
            posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_TRUNC, 0o600)
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
            let watch = try ExitWatch()
            var child: pid_t = 0
            let status = posix_spawn(&child, path, &actions, &attributes, argv, envp)
            guard status == 0 else {
                watch.abandon()
                unlink(outPath)
                unlink(errPath)
                throw CocoaError(.executableLoad, userInfo: [NSFilePathErrorKey: path, NSLocalizedDescriptionKey: String(cString: strerror(status))])
            }
            pid = child
            exitWatch = watch
            watch.reap(child)
        }

        deinit {
            if exitWatch.status == nil { kill(pid, SIGKILL) }
            exitWatch.block()
            try? FileManager.default.removeItem(atPath: outPath)
            try? FileManager.default.removeItem(atPath: errPath)
        }

        /// What it printed so far.
        public var stdout: String { (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "" }
        public var stderr: String { (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "" }

        /// Sends a signal.
        public func signal(_ number: Int32) { kill(pid, number) }

        /// What it left, if it has exited; `nil` while it runs.
        public func exited() -> Result? {
            if let result = cached.withLock({ $0 }) { return result }
            guard let status = exitWatch.status else { return nil }
            let result = Result(status: status, stdout: stdout, stderr: stderr)
            cached.withLock { $0 = result }
            return result
        }

        /// Waits until it exits.
        public func wait() -> Result {
            exitWatch.block()
            // The status is set before the exit is announced.
            return exited() ?? Result(status: -1, stdout: stdout, stderr: stderr)
        }

        /// Waits up to `timeout` for it to exit; kills it after that and returns `nil`.
        public func wait(timeout: Duration) async -> Result? {
            if let result = try? await until("the exit of \(pid)", timeout: timeout, { $0 }) { return result }
            kill(pid, SIGKILL)
            _ = wait()
            return nil
        }

        /// Waits until `text` is in its output (each write wakes the wait); throws when it exits without printing it,
        /// or after `timeout`.
        public func waitForOutput(_ text: String, in stream: Stream = .stdout, timeout: Duration = .seconds(10)) async throws {
            _ = try await until("'\(text)' from \(pid)", timeout: timeout) { exited -> Bool? in
                if (stream == .stdout ? self.stdout : self.stderr).contains(text) { return true }
                if let exited {
                    throw Awaiting.TimedOut(description: "it exited \(exited.status) before printing '\(text)': \(exited.stderr)")
                }
                return nil
            }
        }

        /// Returns the first non-nil value of `condition`, checked now, after every write to its output (unless
        /// `output` is false) and at its exit (given the result then, nil while it runs); throws
        /// ``Awaiting/TimedOut`` after `timeout`.
        /// - Parameter also: more events to check the condition after (a notification socket).
        public func until<T>(
            _ what: @autoclosure () -> String, timeout: Duration, output: Bool = true, also: [Awaiting.Source] = [],
            _ condition: (Result?) throws -> T?
        ) async throws -> T {
            let written: [Awaiting.Source] = output ? [.file(outPath), .file(errPath)] : []
            return try await Awaiting.until(what(), timeout: timeout, on: written + [.readable(exitWatch.descriptor)] + also) {
                try condition(exited())
            }
        }
    }

    /// The exit of one child: a thread blocks in waitpid(2), records the status, then closes one end of a socket pair,
    /// so that the other (``descriptor``) reads as hung up from then on, for `poll(2)` and blocking waits alike.
    final class ExitWatch: @unchecked Sendable {
        private let recorded = Mutex<Int32?>(nil)
        /// Hung up once the child has exited.
        let descriptor: Int32
        private let writeEnd: Int32

        init() throws {
            var ends: [Int32] = [-1, -1]
            // Close-on-exec from the start (a socket pair: pipe2 is not in Swift's Glibc): a child spawned meanwhile
            // that held the write end would hide the exit.
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
                throw CocoaError(.fileWriteUnknown)
            }
            descriptor = ends[0]
            writeEnd = ends[1]
        }

        deinit { close(descriptor) }

        /// Exit status, or 128 + signal as shells report it; nil while it runs.
        var status: Int32? { recorded.withLock { $0 } }

        /// Starts the thread that reaps `pid`.
        func reap(_ pid: pid_t) {
            let thread = Thread { [self] in
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0, errno == EINTR {}
                let code = status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
                recorded.withLock { $0 = code }
                close(writeEnd)
            }
            thread.name = "caid-test-reap"
            thread.start()
        }

        /// For a child that was never started.
        func abandon() {
            recorded.withLock { $0 = -1 }
            close(writeEnd)
        }

        /// Blocks the calling thread until the child has exited.
        func block() {
            var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            while status == nil, poll(&entry, 1, -1) < 0, errno == EINTR {}
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

    /// The socket, for ``Awaiting/Source/readable(_:)``: a datagram wakes a wait (which must take it with
    /// ``takeWaiting()``).
    public var descriptor: Int32 { fd }

    /// The datagrams that have arrived, without waiting for more.
    public func takeWaiting() -> [String] {
        var messages: [String] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            guard n > 0 else { return messages }
            messages.append(String(decoding: buffer[0..<n], as: UTF8.self))
        }
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

extension Programs.Running {
    /// ``until(_:timeout:output:also:_:)`` that wakes on every datagram `notify` receives (caid sends STATUS= on
    /// each change of its health summary and READY=1 once ready) and at the exit, not on its output (a condition
    /// that runs `caid health` after each log line would load the machine), with the datagrams so far.
    public func until<T>(
        _ what: @autoclosure () -> String, timeout: Duration, notify: NotifySocket, _ condition: (_ messages: [String], Programs.Result?) throws -> T?
    ) async throws -> T {
        var messages: [String] = []
        return try await until(what(), timeout: timeout, output: false, also: [.readable(notify.descriptor)]) { exited in
            messages += notify.takeWaiting()
            return try condition(messages, exited)
        }
    }
}
