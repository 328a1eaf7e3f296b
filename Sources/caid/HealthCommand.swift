import ArgumentParser
import CaidConfiguration
import CaidControl
import CaidCore
import Foundation

struct HealthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "health",
        abstract: "Show the daemon's health.",
        discussion: """
            Exit status: 0 ready, 1 alive but not ready, 2 not reachable. With --watch it prints the health again \
            after every change until interrupted, and exits 2 when caid stops answering.
            """
    )

    @Option(help: ArgumentHelp(
        "The health socket (default: $CAID_HEALTH_SOCKET, else \(CaidConfig.Defaults.healthSocket)).",
        valueName: "path"))
    var socket: String?

    @Flag(help: "Print the raw /status JSON (with --watch: one line per change).")
    var json = false

    @Flag(help: "Print the health again after every change (GET /status?watch), until interrupted.")
    var watch = false

    func run() throws {
        let path = socket ?? ProcessInfo.processInfo.environment["CAID_HEALTH_SOCKET"] ?? CaidConfig.Defaults.healthSocket
        if watch { try Self.watch(path, json: json) }
        let response: HealthClient.Response
        do {
            response = try HealthClient(socketPath: path).get("/status")
        } catch {
            printError("caid health: \(error)")
            throw ExitCode(2)
        }
        guard response.status == 200, let snapshot = try? HealthRoutes.decode(Data(response.body)) else {
            printError("caid health: \(path) answered \(response.status) with something that is not caid's status")
            throw ExitCode(2)
        }
        if json {
            print(String(decoding: response.body, as: UTF8.self))
        } else {
            print(Self.table(snapshot))
        }
        if !snapshot.ready { throw ExitCode(1) }
    }

    /// Prints every snapshot caid sends; throws exit 2 once the stream ends (caid stopped) or cannot be had.
    static func watch(_ path: String, json: Bool) throws -> Never {
        let refused: Int?
        do {
            refused = try HealthClient(socketPath: path).watch { line in
                // Written at once, not through print's buffer: a reader of a pipe or file sees each change as it comes.
                if json {
                    FileHandle.standardOutput.write(Data(line + [UInt8(ascii: "\n")]))
                } else if let snapshot = try? HealthRoutes.decode(Data(line)) {
                    FileHandle.standardOutput.write(Data((table(snapshot) + "\n\n").utf8))
                }
                return true
            }
        } catch {
            printError("caid health: \(error)")
            throw ExitCode(2)
        }
        switch refused {
        case nil: printError("caid health: \(path) closed the watch: caid stopped")
        case 503: printError("caid health: \(path) refused the watch: at most \(HealthWatchers.limit) may watch at once")
        case let status?: printError("caid health: \(path) answered \(status) to the watch; is this caid's health socket?")
        }
        throw ExitCode(2)
    }

    /// A table an operator reads at a glance.
    static func table(_ snapshot: HealthSnapshot, now: Date = Date()) -> String {
        var lines = ["caid: \(snapshot.summary)"]
        guard !snapshot.services.isEmpty else { return lines[0] }
        let rows = snapshot.services.map { service -> [String] in
            var note = service.detail ?? ""
            if let error = service.lastError, service.state != .running {
                note += note.isEmpty ? "last error: \(error)" : "; last error: \(error)"
            }
            return [
                service.name, service.state.rawValue, Self.age(now.timeIntervalSince(service.since)),
                String(service.restarts), service.required ? "yes" : "no", note,
            ]
        }
        let header = ["SERVICE", "STATE", "FOR", "RESTARTS", "REQUIRED", "DETAIL"]
        let widths = (0..<header.count - 1).map { column in
            ([header] + rows).map { $0[column].count }.max() ?? 0
        }
        for row in [header] + rows {
            var line = ""
            for (column, cell) in row.enumerated() {
                line += column < widths.count ? cell.padding(toLength: widths[column] + 2, withPad: " ", startingAt: 0) : cell
            }
            lines.append(line)
        }
        return lines.joined(separator: "\n")
    }

    static func age(_ seconds: TimeInterval) -> String {
        let whole = max(0, Int(seconds))
        if whole < 60 { return "\(whole)s" }
        if whole < 3600 { return "\(whole / 60)m\(whole % 60)s" }
        return "\(whole / 3600)h\(whole / 60 % 60)m"
    }
}
