// swift-tools-version:6.2
import PackageDescription

/// Settings every caid target shares: Swift 6 mode, strict concurrency, no warnings.
let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .treatAllWarnings(as: .error),
]

let package = Package(
    name: "caid",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "caid", targets: ["caid"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.0"..<"5.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-http2", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
    ],
    targets: [
        // C libraries, through small shims.
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        .systemLibrary(name: "CFuse3", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        // The TDX guest device's RTMR extend request (kernel headers only).
        .systemLibrary(name: "CTDXGuest"),
        // glibc's GNU extensions: malloc_trim (the gateway gives the heap back after a burst), sync_file_range (the
        // fetcher writes back as it downloads).
        .systemLibrary(name: "CGNU"),
        // CRC-64 folded with carry-less multiplication (x86-64's PCLMULQDQ; compiler intrinsics only): OSS's checksum
        // of every downloaded and cached byte at the disk's speed.
        .systemLibrary(name: "CCRC64"),
        // BoringSSL's AES-256-GCM AEAD, from the copy swift-crypto links in: one key schedule for a run of gocryptfs
        // blocks (the mount's reads). Declarations only; the code comes with the Crypto product.
        .systemLibrary(name: "CBoringAEAD"),
        // NVML's confidential-computing structs and the types of the entry points the GPU attester resolves (nvml.h's
        // definitions; libnvidia-ml is loaded at run time, so building needs no NVIDIA header or driver).
        .systemLibrary(name: "CNVML"),
        // The declaration of libFuzzer's driver entry; the library itself comes with `-sanitize=fuzzer` (scripts/fuzz.sh).
        .systemLibrary(name: "CLibFuzzer"),

        // The foundation every module may use: secrets in wipeable memory, the base64url codec, the positioned read
        // and write loops, resource URIs, signals, the failure classification. No configuration, no services.
        .target(name: "CaidBase", dependencies: ["CGNU"], swiftSettings: strict),
        // The service runtime: the supervisor with its restart policy, service status and the health registry.
        .target(
            name: "CaidCore",
            dependencies: [
                "CaidBase",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // cai.env and caid's own settings, as the daemon reads them; only the daemon (and its fuzz target) use it.
        .target(
            name: "CaidConfiguration",
            dependencies: ["CaidBase", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        // sd_notify, the watchdog and the journald log handler.
        .target(
            name: "CaidSystemd",
            dependencies: [
                "CSystemd", "CaidBase", "CaidCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // The health socket (server and client) and metrics.
        .target(
            name: "CaidControl",
            dependencies: [
                "CaidCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strict
        ),
        // The gocryptfs v2 format, pure: config, key derivation, content, names, encryptor.
        .target(
            name: "Gocryptfs",
            dependencies: [
                "CBoringAEAD", "CaidBase",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ],
            swiftSettings: strict
        ),
        // The read-only FUSE mount of a gocryptfs volume (libfuse3 low-level API).
        .target(
            name: "CacheFS",
            dependencies: [
                "CFuse3", "CaidBase", "CaidCore", "Gocryptfs",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // Alibaba Cloud OSS's protocol and the download's formats, pure: signing, CRC-64, endpoints, proxies, the
        // listing and error XML, the download plan, checkpoint and manifests, the part tally and the streaming ledger.
        .target(
            name: "OSSProtocol",
            dependencies: ["CCRC64", "CaidBase", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict
        ),
        // The OSS client (async-http-client) and the verified parallel downloader over OSSProtocol.
        .target(
            name: "ObjectStore",
            dependencies: [
                "CGNU", "CaidBase", "CaidCore", "OSSProtocol",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // TEE evidence: TDX through configfs-tsm, NVIDIA GPUs through NVML (loaded at run time), and the sample attester.
        .target(
            name: "Attestation",
            dependencies: ["CNVML", "CTDXGuest", "CaidBase", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict
        ),
        // Trustee's KBS protocol, pure: RCAR in both dialects, the session state machine, JWE, the TEE keys, cookies
        // and tokens.
        .target(
            name: "KBSProtocol",
            dependencies: [
                "CaidBase", "Attestation",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ],
            swiftSettings: strict
        ),
        // The Trustee KBS client (async-http-client, over KBSProtocol) and the attestation, key and measure services.
        .target(
            name: "KeyBroker",
            dependencies: [
                "CaidBase", "CaidCore", "Attestation", "KBSProtocol",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // RA-TLS, pure: the attested certificate as TNG makes it (CBOR, the evidence extension), Attestation Service
        // tokens and their trust, the verdict cache and the one certificate renewal loop.
        .target(
            name: "RATLS",
            dependencies: [
                "Attestation",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // Trustee's Attestation Service over HTTP (async-http-client): tokens for evidence, and the peer verifier
        // that checks an RA-TLS certificate there.
        .target(
            name: "AttestationService",
            dependencies: [
                "Attestation", "RATLS",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            swiftSettings: strict
        ),
        // NIO pieces the gateway and the sharing server share: the listener.
        .target(
            name: "CaidNIO",
            dependencies: [.product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")],
            swiftSettings: strict
        ),
        // The attested gateway: the HTTP/2 CONNECT server, the tunnel client and proxy, the nat rules and the guard.
        .target(
            name: "Gateway",
            dependencies: [
                "CGNU", "CaidBase", "CaidCore", "Attestation", "RATLS", "AttestationService", "CaidNIO",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),
        // Model sharing between hosts: mutually attested TLS and ranged reads of the verified ciphertext cache.
        .target(
            name: "Sharing",
            dependencies: [
                "CaidBase", "CaidCore", "OSSProtocol", "ObjectStore", "Attestation", "RATLS", "AttestationService", "CaidNIO",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        // The command line: a thin layer over the modules above.
        .executableTarget(
            name: "caid",
            dependencies: [
                "CaidBase", "CaidCore", "CaidConfiguration", "CaidSystemd", "CaidControl", "Gocryptfs", "CacheFS", "OSSProtocol", "ObjectStore", "Attestation", "KBSProtocol", "KeyBroker", "RATLS", "AttestationService", "Gateway", "Sharing",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: strict
        ),
        // One function per parser of untrusted bytes, feeding it the bytes as the product does (scripts/fuzz.sh).
        .target(
            name: "CaidFuzzTargets",
            dependencies: [
                "CaidConfiguration", "Gocryptfs", "OSSProtocol", "Attestation", "KBSProtocol", "RATLS", "AttestationService", "Gateway",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
            ],
            swiftSettings: strict
        ),
        // The libFuzzer driver when built by scripts/fuzz.sh (`-DCAID_FUZZ`); otherwise it replays inputs and
        // writes the generated seeds.
        .executableTarget(name: "caid-fuzz", dependencies: ["CLibFuzzer", "CaidFuzzTargets"], swiftSettings: strict),
        // Test services and helpers shared by the test targets.
        .target(
            name: "CaidTestSupport",
            dependencies: [
                "CaidBase", "CaidCore", "Gocryptfs",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),

        .testTarget(
            name: "CaidCoreTests",
            dependencies: [
                "CaidBase", "CaidCore", "CaidConfiguration", "CaidTestSupport", "CGNU",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .testTarget(name: "CaidFuzzTargetsTests", dependencies: ["CaidFuzzTargets"], swiftSettings: strict),
        .testTarget(name: "CaidSystemdTests", dependencies: ["CaidCore", "CaidSystemd", "CaidTestSupport"], swiftSettings: strict),
        .testTarget(
            name: "CaidControlTests",
            dependencies: [
                "CaidCore", "CaidControl", "CaidTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "GocryptfsTests",
            dependencies: ["Gocryptfs", "CaidTestSupport", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict
        ),
        .testTarget(
            name: "ObjectStoreTests",
            dependencies: ["CaidBase", "CaidCore", "OSSProtocol", "ObjectStore", "caid", "CaidTestSupport"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "KeyBrokerTests",
            dependencies: [
                "CNVML", "CaidBase", "CaidCore", "CaidConfiguration", "Attestation", "KBSProtocol", "KeyBroker", "caid", "CaidTestSupport",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "GatewayTests",
            dependencies: [
                "CaidCore", "Attestation", "RATLS", "AttestationService", "Gateway", "CaidTestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SharingTests",
            dependencies: [
                "OSSProtocol", "ObjectStore", "Attestation", "RATLS", "AttestationService", "Sharing", "CaidTestSupport",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "CacheFSTests",
            dependencies: [
                "CaidBase", "CaidCore", "Gocryptfs", "CacheFS", "CaidTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "CaidCLITests",
            dependencies: [
                "CaidBase", "CaidCore", "CaidControl", "caid", "CaidTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
    ]
)
