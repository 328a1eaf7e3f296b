import CaidCore
import Metrics
import Prometheus

/// Prometheus metrics for `/metrics`: the services' states and restarts, plus whatever caid's modules record
/// through swift-metrics once ``bootstrap()`` has run.
public final class HealthMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry

    // Computed: MetricNameDescriptor is not Sendable, so it cannot be a stored static.
    private static var ready: MetricNameDescriptor {
        MetricNameDescriptor(namespace: "caid", metricName: "ready", unitName: "", helpText: "1 when every required service runs")
    }
    private static var state: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "caid", subsystem: "service", metricName: "state", unitName: "",
            helpText: "1 for the state each service is in, 0 for the others")
    }
    private static var restarts: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "caid", subsystem: "service", metricName: "restarts", unitName: "total",
            helpText: "restarts after failures since caid started")
    }

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
    }

    /// Routes swift-metrics (counters and timers recorded anywhere in caid) to this registry. Once per process.
    public func bootstrap() {
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    }

    /// Renders the Prometheus text exposition after bringing the service gauges up to date with `snapshot`.
    public func render(_ snapshot: HealthSnapshot) -> [UInt8] {
        registry.makeGauge(descriptor: Self.ready).set(to: snapshot.ready ? 1 : 0)
        for service in snapshot.services {
            for state in ServiceState.allCases {
                registry.makeGauge(descriptor: Self.state, labels: [("service", service.name), ("state", state.rawValue)])
                    .set(to: service.state == state ? 1 : 0)
            }
            registry.makeGauge(descriptor: Self.restarts, labels: [("service", service.name)])
                .set(to: Double(service.restarts))
        }
        return registry.emitToBuffer()
    }
}
