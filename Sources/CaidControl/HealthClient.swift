import Foundation
import Glibc

/// A small blocking HTTP/1.1 client for the health socket, for `caid health` and the socket's own stale check.
public struct HealthClient: Sendable {
    /// The socket could not be reached or did not answer in HTTP.
    public struct Unreachable: Error, CustomStringConvertible {
        public var description: String
    }

    /// One answer.
    public struct Response: Sendable {
        public var status: Int
        public var body: [UInt8]
    }

    public let socketPath: String
    public let timeout: Duration

    public init(socketPath: String, timeout: Duration = .seconds(5)) {
        self.socketPath = socketPath
        self.timeout = timeout
    }

    /// Sends `GET path` and reads the whole answer.
    public func get(_ path: String) throws(Unreachable) -> Response {
        let fd = try connection(sending: "GET \(path) HTTP/1.1\r\nHost: caid\r\nConnection: close\r\n\r\n")
        defer { close(fd) }
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        while answer.count < 8 << 20 {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { break }
            guard n > 0 else { throw Unreachable(description: "no answer from \(socketPath): \(Self.lastError())") }
            answer += buffer[0..<n]
        }
        return try Self.parse(answer, from: socketPath)
    }

    /// Watches `/status?watch`: calls `line` with each snapshot's JSON line as it arrives (the current one first),
    /// until `line` returns false or caid closes the stream. Waits for changes without a timeout; the answer's head
    /// must come within ``timeout``.
    /// - Returns: the status when caid answered something other than 200 (too many watchers), else nil.
    public func watch(_ line: ([UInt8]) -> Bool) throws(Unreachable) -> Int? {
        // HTTP/1.0: the body runs until the close, with no chunk framing to undo.
        let fd = try connection(sending: "GET /status?watch HTTP/1.0\r\nHost: caid\r\n\r\n")
        defer { close(fd) }
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        var headed = false
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return nil }
            guard n > 0 else {
                if headed, errno == EAGAIN || errno == EINTR { continue }
                throw Unreachable(description: "no answer from \(socketPath): \(Self.lastError())")
            }
            pending += buffer[0..<n]
            if !headed {
                guard pending.firstRange(of: Array("\r\n\r\n".utf8)) != nil else {
                    guard pending.count < 64 << 10 else { throw Unreachable(description: "\(socketPath) did not answer in HTTP") }
                    continue
                }
                let response = try Self.parse(pending, from: socketPath)
                guard response.status == 200 else { return response.status }
                headed = true
                // From here on caid writes only when something changes, which may be never.
                var forever = timeval(tv_sec: 0, tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &forever, socklen_t(MemoryLayout<timeval>.size))
                pending = response.body
            }
            while let end = pending.firstIndex(of: UInt8(ascii: "\n")) {
                guard line(Array(pending[..<end])) else { return nil }
                pending.removeSubrange(...end)
            }
            guard pending.count < 8 << 20 else { throw Unreachable(description: "\(socketPath) sent a line over 8 MiB") }
        }
    }

    /// A connected socket with `request` sent, its waits bounded by ``timeout``.
    private func connection(sending request: String) throws(Unreachable) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Unreachable(description: "cannot create a socket: \(Self.lastError())") }
        do throws(Unreachable) {
            try send(request, on: fd)
            return fd
        } catch {
            close(fd)
            throw error
        }
    }

    private func send(_ request: String, on fd: Int32) throws(Unreachable) {
        var time = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: Int(timeout.components.attoseconds / 1_000_000_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &time, socklen_t(MemoryLayout<timeval>.size))

        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw Unreachable(description: "\(socketPath) is too long for a Unix socket path")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            throw Unreachable(description: "cannot connect to \(socketPath): \(Self.lastError()); is caid running?")
        }
        let bytes = Array(request.utf8)
        guard bytes.withUnsafeBytes({ Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == bytes.count else {
            throw Unreachable(description: "cannot send to \(socketPath): \(Self.lastError())")
        }
    }

    static func parse(_ answer: [UInt8], from socketPath: String) throws(Unreachable) -> Response {
        let separator: [UInt8] = Array("\r\n\r\n".utf8)
        guard let end = answer.firstRange(of: separator) else {
            throw Unreachable(description: "\(socketPath) did not answer in HTTP")
        }
        let head = String(decoding: answer[..<end.lowerBound], as: UTF8.self)
        let statusLine = head.split(separator: "\r\n").first ?? ""
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
            throw Unreachable(description: "\(socketPath) sent a malformed status line")
        }
        return Response(status: status, body: Array(answer[end.upperBound...]))
    }

    private static func lastError() -> String { String(cString: strerror(errno)) }
}
