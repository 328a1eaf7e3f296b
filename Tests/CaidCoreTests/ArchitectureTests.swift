import CaidTestSupport
import Testing

/// The package's shape: what `docs/architecture.md` says of the modules is what `Package.swift` and the imports are.
@Suite struct ArchitectureTests {
    @Test func theModuleGraphPointsDownAndIsTheOneDocumented() throws {
        let check = try Programs.run("/usr/bin/env", ["python3", Programs.packageRoot + "/scripts/module-graph.py", "--check"])
        #expect(check.status == 0, "scripts/module-graph.py --check: \(check.stderr)")
    }
}
