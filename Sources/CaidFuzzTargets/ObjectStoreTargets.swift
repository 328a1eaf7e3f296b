import Foundation
import OSSProtocol

extension FuzzTarget {
    /// A ListObjectsV2 page from OSS (or whatever answers at the endpoint): caid's own XML reader.
    static let ossListing = FuzzTarget(name: "oss-listing", maxLength: 16384) { bytes in
        _ = try? OSSXML.listPage(Data(bytes))
    }

    /// An OSS `<Error>` body, and the same document as the base64 `x-oss-err` header of a HEAD.
    static let ossError = FuzzTarget(name: "oss-error", maxLength: 4096) { bytes in
        let data = Data(bytes)
        _ = OSSXML.error(data, status: 403, requestID: "fuzz").isPermanent
        _ = OSSXML.headError(header: String(decoding: bytes, as: UTF8.self), status: 404).description
        _ = OSSXML.headError(header: data.base64EncodedString(), status: 404).description
    }

    /// A model manifest from the bucket (`<prefix>.caid-manifest.json`): the canonical-form check, then the listing
    /// comparison against names taken from its own objects.
    static let modelManifest = FuzzTarget(name: "model-manifest", maxLength: 65536) { bytes in
        guard let manifest = try? ModelManifest.parse(Array(bytes)) else { return }
        _ = manifest.digest
        _ = manifest.compare(listing: manifest.objects.map { (name: $0.name, size: $0.size &+ 1) })
        _ = manifest.objects.first.flatMap { manifest.object(named: $0.name) }
    }
}
