import Foundation

/// Where an OSS bucket is reached, from `MODEL_OSS_ENDPOINT` and the bucket name.
public struct Endpoint: Sendable, Equatable {
    /// The region id used in V4 signatures, such as `cn-beijing`.
    public var region: String
    /// The URL of the bucket: virtual-hosted (`https://bucket.oss-cn-beijing.aliyuncs.com`) for domain endpoints,
    /// path style (`http://10.0.0.1:8080/bucket`) for IP endpoints or when asked.
    public var bucketURL: URL
    public var pathStyle: Bool

    /// Derives the region from `oss-<region>[-internal].aliyuncs.com` unless `region` is given.
    /// - Returns: `nil` with a reason when the endpoint names no region and none was given.
    public static func resolve(endpoint: URL, bucket: String, region: String? = nil, pathStyle forcePathStyle: Bool = false) -> Result<Endpoint, EndpointError> {
        guard let host = endpoint.host, let scheme = endpoint.scheme else {
            return .failure(EndpointError(message: "\(endpoint) has no host"))
        }
        let derived = region ?? Self.region(fromHost: host)
        guard let derived else {
            return .failure(EndpointError(message: "cannot tell the OSS region from \(host); set CAID_OSS_REGION (for example cn-beijing)"))
        }
        let isIP = host.allSatisfy { $0.isNumber || $0 == "." } || host.contains(":")
        let pathStyle = forcePathStyle || isIP
        var components = URLComponents()
        components.scheme = scheme
        components.port = endpoint.port
        if pathStyle {
            components.host = host
            components.path = "/" + bucket
        } else {
            components.host = bucket + "." + host
        }
        guard let url = components.url else { return .failure(EndpointError(message: "cannot build a URL for bucket \(bucket) at \(host)")) }
        return .success(Endpoint(region: derived, bucketURL: url, pathStyle: pathStyle))
    }

    /// `oss-cn-beijing-internal.aliyuncs.com` → `cn-beijing`.
    static func region(fromHost host: String) -> String? {
        let first = host.split(separator: ".").first.map(String.init) ?? ""
        guard first.hasPrefix("oss-"), host.hasSuffix(".aliyuncs.com") else { return nil }
        var region = String(first.dropFirst(4))
        if region.hasSuffix("-internal") { region = String(region.dropLast("-internal".count)) }
        return region.isEmpty ? nil : region
    }
}

/// The endpoint cannot be used.
public struct EndpointError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
