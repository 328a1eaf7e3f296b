import CaidControl
import CaidCore
import CaidTestSupport
import Foundation

/// `caid health --watch --json` in a child process: caid writes a line on every change of its health, and each
/// line wakes a wait, so tests wait for a state of the daemon without polling it.
final class HealthWatch: @unchecked Sendable {
    let process: Programs.Running

    /// Starts watching `socket`, which must be listening (a watch of a socket not there yet exits 2 at once).
    init(socket: String) throws {
        process = try Programs.start(Programs.caid, ["health", "--watch", "--json", "--socket", socket])
    }

    deinit {
        process.signal(SIGKILL)
        _ = process.wait()
    }

    /// The newest snapshot caid has sent.
    var latest: HealthSnapshot? {
        let lines = process.stdout.split(separator: "\n")
        return lines.last.flatMap { try? HealthRoutes.decode(Data($0.utf8)) }
    }

    /// Returns the first non-nil value of `condition` for the newest snapshot, checked at each change; throws when
    /// the watch ends (caid stopped) or `timeout` passes first.
    func until<T>(_ what: @autoclosure () -> String, timeout: Duration = .seconds(90), _ condition: (HealthSnapshot) throws -> T?) async throws -> T {
        try await process.until(what(), timeout: timeout) { exited -> T? in
            if let latest, let value = try condition(latest) { return value }
            if let exited { throw PeerProcess.Failure(description: "the health watch ended (\(exited.status)): \(exited.stderr)") }
            return nil
        }
    }
}
