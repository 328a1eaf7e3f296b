import CaidBase
import Foundation
import Synchronization

/// Progress of long work: a bar redrawn in place on a terminal, a plain line every few seconds otherwise.
final class ProgressMeter: Sendable {
    private struct State {
        var done: UInt64 = 0
        var total: UInt64 = 0
        var drawing: Throttle
        var finished = false
    }

    private let label: String
    private let fixedTotal: UInt64
    private let started = ContinuousClock.now
    private let terminal = isatty(2) != 0
    private let state: Mutex<State>

    init(label: String, total: UInt64) {
        self.label = label
        self.fixedTotal = total
        var drawing = Throttle(interval: terminal ? .milliseconds(200) : .seconds(5))
        _ = drawing.admits()  // the first line comes after an interval, not at once
        state = Mutex(State(drawing: drawing))
    }

    /// Counts `bytes` more; draws when it is time.
    func add(_ bytes: UInt64) {
        let done = state.withLock { state -> UInt64 in
            state.done += bytes
            return state.done
        }
        update(done: done, total: fixedTotal)
    }

    /// Sets the progress; draws when it is time.
    func update(done: UInt64, total: UInt64) {
        let line: String? = state.withLock { state in
            state.done = done
            state.total = total
            let now = ContinuousClock.now
            guard state.drawing.admits(at: now) else { return nil }
            return render(state.done, total: state.total, now: now)
        }
        if let line { draw(line) }
    }

    /// Draws the final state and ends the line.
    func finish() {
        let line: String? = state.withLock { state in
            guard !state.finished else { return nil }
            state.finished = true
            return render(state.done, total: state.total, now: .now)
        }
        if let line {
            draw(line)
            if terminal { printError("") }
        }
    }

    private func render(_ done: UInt64, total: UInt64, now: ContinuousClock.Instant) -> String {
        let elapsed = max(0.001, Double((now - started).components.seconds) + Double((now - started).components.attoseconds) / 1e18)
        let rate = Double(done) / elapsed
        let fraction = total > 0 ? min(1, Double(done) / Double(total)) : 1
        var line = "\(label): \(ByteCount(done)) of \(ByteCount(total)) (\(Int(fraction * 100))%), \(ByteCount(UInt64(rate)))/s"
        if rate > 0, done < total { line += ", \(Int(Double(total - done) / rate)) s left" }
        if terminal {
            let width = 24
            let filled = Int(fraction * Double(width))
            line = "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "] " + line
        }
        return line
    }

    private func draw(_ line: String) {
        if terminal {
            var bytes = Array(("\r\u{1B}[K" + line).utf8)
            _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
        } else {
            printError(line)
        }
    }
}

/// A byte count for people: "512 B", "3.2 MB", "6.1 GB" (decimal units, as download tools show them).
struct ByteCount: CustomStringConvertible {
    var value: UInt64
    init(_ value: UInt64) { self.value = value }

    var description: String {
        let units = ["B", "kB", "MB", "GB", "TB"]
        var amount = Double(value)
        var unit = 0
        while amount >= 1000, unit < units.count - 1 {
            amount /= 1000
            unit += 1
        }
        return unit == 0 ? "\(value) B" : String(format: "%.1f %@", amount, units[unit])
    }
}
