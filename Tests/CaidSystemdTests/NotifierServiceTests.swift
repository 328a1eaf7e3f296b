import CaidCore
import CaidSystemd
import CaidTestSupport
import Logging
import ServiceLifecycle
import Synchronization
import Testing

@Suite struct NotifierServiceTests {
    final class Messages: Sendable {
        private let list = Mutex<[String]>([])
        func append(_ message: String) { list.withLock { $0.append(message) } }
        var all: [String] { list.withLock { $0 } }
        func count(_ fragment: String) -> Int { all.filter { $0.contains(fragment) }.count }
    }

    let logger = quietLogger

    @Test func readyStatusWatchdogAndStopping() async throws {
        let registry = HealthRegistry()
        await registry.register("mount", required: true)
        let messages = Messages()
        let notifier = NotifierService(
            registry: registry, logger: logger, send: { messages.append($0) }, watchdogTimeout: .milliseconds(100),
            stallThreshold: .milliseconds(150), startExtension: .seconds(3))
        try await withRunningServices([notifier]) {
            // The supervisor ticks: the watchdog is fed and the start timeout extended.
            let ticker = Task {
                while !Task.isCancelled {
                    await registry.tick()
                    try? await Task.sleep(for: .milliseconds(20))
                }
            }
            try await Task.sleep(for: .milliseconds(300))
            #expect(messages.count("WATCHDOG=1") >= 3)
            #expect(messages.count("EXTEND_TIMEOUT_USEC=3000000") >= 3)
            #expect(messages.count("READY=1") == 0)
            #expect(messages.all.first { $0.contains("STATUS=") } == "STATUS=starting: mount waiting")

            await registry.set("mount", .running)
            try await Task.sleep(for: .milliseconds(200))
            #expect(messages.all.contains("READY=1\nSTATUS=ready: mount running"))
            let extensionsAtReady = messages.count("EXTEND_TIMEOUT_USEC")

            // The supervisor stops ticking: no more watchdog pets.
            ticker.cancel()
            try await Task.sleep(for: .milliseconds(250))
            let pets = messages.count("WATCHDOG=1")
            try await Task.sleep(for: .milliseconds(300))
            #expect(messages.count("WATCHDOG=1") == pets)
            #expect(messages.count("EXTEND_TIMEOUT_USEC") == extensionsAtReady)
        }
        #expect(messages.all.last == "STOPPING=1\nSTATUS=stopping")
        #expect(messages.count("READY=1") == 1)
    }
}
