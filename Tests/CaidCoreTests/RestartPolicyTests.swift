import CaidCore
import Testing

@Suite struct RestartPolicyTests {
    let policy = RestartPolicy(baseDelay: .milliseconds(500), maxDelay: .seconds(60), resetAfter: .seconds(120))

    @Test func doublesUpToTheCapWithJitterInTheUpperHalf() {
        var backoff = RestartPolicy.Backoff()
        var full: [Duration] = []
        for _ in 0..<12 { full.append(backoff.failed(after: .seconds(1), policy: policy, random: 1)) }
        #expect(full.prefix(5) == [.milliseconds(500), .seconds(1), .seconds(2), .seconds(4), .seconds(8)])
        #expect(full.suffix(4).allSatisfy { $0 == .seconds(60) })

        var other = RestartPolicy.Backoff()
        let low = (0..<12).map { _ in other.failed(after: .seconds(1), policy: policy, random: 0) }
        #expect(zip(low, full).allSatisfy { $0 == $1 / 2 })
    }

    @Test func aHealthyRunResetsTheBackoff() {
        var backoff = RestartPolicy.Backoff()
        for _ in 0..<6 { _ = backoff.failed(after: .seconds(1), policy: policy, random: 1) }
        #expect(backoff.failures == 6)
        #expect(backoff.failed(after: .seconds(121), policy: policy, random: 1) == .milliseconds(500))
        #expect(backoff.failures == 1)
    }

    @Test func neverOverflowsAfterManyFailures() {
        var backoff = RestartPolicy.Backoff()
        for _ in 0..<10_000 {
            let delay = backoff.failed(after: .zero, policy: policy, random: 0.5)
            #expect(delay <= .seconds(60) && delay >= .zero)
        }
    }
}
