import Foundation

/// Evidence of the NVIDIA confidential-computing GPUs through NVML, loaded at run time so that caid builds and runs
/// on hosts without a GPU driver.
///
/// Each GPU signs an attestation report over a 32-byte nonce and hands out its certificate chain. The evidence goes
/// to Trustee in one of two forms (``GPUEvidenceForm``): `gpu_evidence` inside the TDX evidence, which openanolis
/// Trustee verifies, or `{"nvidia":{"device_evidence_list":[…]}}` as the 0.4.0 protocol's additional evidence,
/// which upstream Trustee's `nvidia` verifier takes.
///
/// A GPU whose report or certificate NVML cannot give is left out and named in ``Collection/missing``, as
/// Trustiflux's attester does; Trustee's policy then decides whether the remaining GPUs are enough.
public struct GPUAttester: Sendable {
    /// One GPU's evidence.
    public struct Device: Sendable, Equatable {
        public var index: Int
        public var uuid: String
        public var name: String
        public var architecture: String
        public var vbiosVersion: String
        public var ccEnabled: Bool
        public var report: [UInt8]
        public var certificateChain: [UInt8]
    }

    /// A GPU NVML sees but whose evidence it could not give.
    public struct MissingDevice: Sendable, Equatable, CustomStringConvertible {
        public var index: Int
        public var uuid: String
        public var reason: String

        public var description: String { "GPU \(index) (\(uuid)): \(reason)" }
    }

    /// What NVML gave for all GPUs, with the driver version and the time it was collected.
    public struct Collection: Sendable {
        public var driverVersion: String
        /// GPUs in confidential-computing mode whose evidence NVML gave.
        public var devices: [Device]
        /// GPUs left out, and why.
        public var missing: [MissingDevice]
        public var collected: Date

        /// The `gpu_evidence` object carried inside the TDX evidence: openanolis/trustee
        /// `deps/verifier/src/tdx/gpu/mod.rs` `GpuEvidenceList` (v1.5.2–v1.9.0; every field but the report and the
        /// certificate is required, `collection_time` as RFC 3339, report and certificate standard base64).
        public var embeddedEvidence: JSONValue {
            let formatter = ISO8601DateFormatter()
            return [
                "evidence_list": .array(devices.map { device in
                    [
                        "index": .integer(Int64(device.index)), "uuid": .string(device.uuid), "name": .string(device.name),
                        "driver_version": .string(driverVersion), "vbios_version": .string(device.vbiosVersion),
                        "attestation_report": .string(Base64.standard(device.report)),
                        "certificate": .string(Base64.standard(device.certificateChain)),
                        "cc_enabled": .bool(device.ccEnabled),
                    ]
                }),
                "collection_time": .string(formatter.string(from: collected)),
            ]
        }

        /// The `nvidia` member of the 0.4.0 additional evidence, in the one form every confidential-containers/trustee
        /// release takes (`deps/verifier/src/nvidia/mod.rs`): `arch` spelled `Hopper` (v0.15.0–v0.16.0 deserialize
        /// nvml-wrapper's `DeviceArchitecture`, case-sensitive; v0.17.0 also takes `HOPPER`), the report in hex
        /// (v0.15.0 decodes hex only; v0.16.0+ hex, then base64), the PEM certificate chain in standard base64.
        public var deviceEvidence: JSONValue {
            [
                "device_evidence_list": .array(devices.map { device in
                    [
                        "arch": .string(device.architecture), "uuid": .string(device.uuid),
                        "evidence": .string(hex(device.report)),
                        "certificate": .string(Base64.standard(device.certificateChain)),
                    ]
                })
            ]
        }
    }

    /// The NVML library caid loads.
    public static let defaultLibrary = "libnvidia-ml.so.1"

    private let library: String

    public init(library: String = Self.defaultLibrary) {
        self.library = library
    }

    /// Collects the evidence of every GPU in confidential-computing mode, or returns nil when NVML is not installed,
    /// sees no GPU, or the GPUs are not in CC mode (then there is nothing a verifier could check).
    /// - Parameter nonce: the first 32 bytes go into each report.
    /// - Throws: when NVML itself fails (initialisation, the device list); a single GPU's failure is in `missing`.
    public func collect(nonce: [UInt8]) throws(AttestationError) -> Collection? {
        guard let nvml = NVML(path: library) else { return nil }
        defer { nvml.close() }
        return try nvml.collect(nonce: Array(nonce.prefix(32)) + [UInt8](repeating: 0, count: max(0, 32 - nonce.count)))
    }
}

/// The few NVML entry points caid uses, resolved with dlsym. Struct layouts are those of nvml.h (r535 and later).
private struct NVML {
    typealias Status = Int32
    typealias NoArg = @convention(c) () -> Status
    typealias CountFn = @convention(c) (UnsafeMutablePointer<UInt32>) -> Status
    typealias HandleFn = @convention(c) (UInt32, UnsafeMutablePointer<OpaquePointer?>) -> Status
    typealias DeviceStringFn = @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>, UInt32) -> Status
    typealias SystemStringFn = @convention(c) (UnsafeMutablePointer<CChar>, UInt32) -> Status
    typealias DeviceUIntFn = @convention(c) (OpaquePointer?, UnsafeMutablePointer<UInt32>) -> Status
    typealias DeviceBufferFn = @convention(c) (OpaquePointer?, UnsafeMutableRawPointer) -> Status
    typealias StateFn = @convention(c) (UnsafeMutableRawPointer) -> Status
    typealias ErrorStringFn = @convention(c) (Status) -> UnsafePointer<CChar>?

    // nvmlConfComputeGpuAttestationReport_t: 3 × uint32, nonce[32], report[0x2000], cecReport[0x1000].
    static let reportStructSize = 12 + 32 + 0x2000 + 0x1000
    // nvmlConfComputeGpuCertificate_t: 2 × uint32, certChain[0x1000], attestationCertChain[0x1400].
    static let certificateStructSize = 8 + 0x1000 + 0x1400

    let handle: UnsafeMutableRawPointer
    let path: String

    init?(path: String) {
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else { return nil }
        self.handle = handle
        self.path = path
    }

    func close() { dlclose(handle) }

    private func symbol<T>(_ name: String, as type: T.Type) throws(AttestationError) -> T {
        guard let pointer = dlsym(handle, name) else {
            throw AttestationError(.gpu, "\(path) has no \(name); an NVIDIA driver r535 or later is needed for GPU attestation")
        }
        return unsafeBitCast(pointer, to: type)
    }

    private func check(_ status: Status, _ call: String) throws(AttestationError) {
        guard status != 0 else { return }
        let text = (try? symbol("nvmlErrorString", as: ErrorStringFn.self))?(status).map { String(cString: $0) } ?? "error \(status)"
        throw AttestationError(.gpu, "NVML \(call) failed: \(text)")
    }

    func collect(nonce: [UInt8]) throws(AttestationError) -> GPUAttester.Collection? {
        try check(try symbol("nvmlInit_v2", as: NoArg.self)(), "nvmlInit_v2")
        defer { _ = (try? symbol("nvmlShutdown", as: NoArg.self))?() }
        var count: UInt32 = 0
        try check(try symbol("nvmlDeviceGetCount_v2", as: CountFn.self)(&count), "nvmlDeviceGetCount_v2")
        guard count > 0 else { return nil }
        let driverVersion = try string { buffer, size throws(AttestationError) in
            try check(try symbol("nvmlSystemGetDriverVersion", as: SystemStringFn.self)(buffer, size), "nvmlSystemGetDriverVersion")
        }
        // nvmlConfComputeSystemState_t: environment, ccFeature, devToolsMode.
        let stateFn = try symbol("nvmlSystemGetConfComputeState", as: StateFn.self)
        let state = try buffer(12) { pointer throws(AttestationError) in try check(stateFn(pointer), "nvmlSystemGetConfComputeState") }
        // Without CC mode a GPU's report proves nothing about confidentiality: send no GPU evidence at all.
        guard Self.uint32(state, at: 4) == 1 else { return nil }

        let handleFn = try symbol("nvmlDeviceGetHandleByIndex_v2", as: HandleFn.self)
        let uuidFn = try symbol("nvmlDeviceGetUUID", as: DeviceStringFn.self)
        let nameFn = try symbol("nvmlDeviceGetName", as: DeviceStringFn.self)
        let vbiosFn = try symbol("nvmlDeviceGetVbiosVersion", as: DeviceStringFn.self)
        let archFn = try symbol("nvmlDeviceGetArchitecture", as: DeviceUIntFn.self)
        let reportFn = try symbol("nvmlDeviceGetConfComputeGpuAttestationReport", as: DeviceBufferFn.self)
        let certFn = try symbol("nvmlDeviceGetConfComputeGpuCertificate", as: DeviceBufferFn.self)

        var devices: [GPUAttester.Device] = []
        var missing: [GPUAttester.MissingDevice] = []
        for index in 0..<count {
            var uuid = "unknown UUID"
            do throws(AttestationError) {
                var device: OpaquePointer?
                try check(handleFn(index, &device), "nvmlDeviceGetHandleByIndex_v2(\(index))")
                uuid = try string { buffer, size throws(AttestationError) in try check(uuidFn(device, buffer, size), "nvmlDeviceGetUUID") }
                let name = try string { buffer, size throws(AttestationError) in try check(nameFn(device, buffer, size), "nvmlDeviceGetName") }
                let vbios = try string { buffer, size throws(AttestationError) in try check(vbiosFn(device, buffer, size), "nvmlDeviceGetVbiosVersion") }
                var arch: UInt32 = 0
                try check(archFn(device, &arch), "nvmlDeviceGetArchitecture")

                let report = try buffer(Self.reportStructSize) { pointer throws(AttestationError) in
                    pointer.advanced(by: 12).copyMemory(from: nonce, byteCount: min(nonce.count, 32))
                    try check(reportFn(device, pointer), "nvmlDeviceGetConfComputeGpuAttestationReport")
                }
                let reportSize = min(Int(Self.uint32(report, at: 4)), 0x2000)

                let certificate = try buffer(Self.certificateStructSize) { pointer throws(AttestationError) in
                    try check(certFn(device, pointer), "nvmlDeviceGetConfComputeGpuCertificate")
                }
                let chainSize = min(Int(Self.uint32(certificate, at: 4)), 0x1400)
                let chainStart = 8 + 0x1000

                devices.append(GPUAttester.Device(
                    index: Int(index), uuid: uuid, name: name, architecture: Self.architectureName(arch), vbiosVersion: vbios,
                    ccEnabled: true, report: Array(report[44..<(44 + reportSize)]),
                    certificateChain: Array(certificate[chainStart..<(chainStart + chainSize)])))
            } catch {
                missing.append(GPUAttester.MissingDevice(index: Int(index), uuid: uuid, reason: error.message))
            }
        }
        return GPUAttester.Collection(driverVersion: driverVersion, devices: devices, missing: missing, collected: Date())
    }

    /// Zeroed memory of `size` bytes handed to NVML, copied out afterwards.
    private func buffer(_ size: Int, _ body: (UnsafeMutableRawPointer) throws(AttestationError) -> Void) throws(AttestationError) -> [UInt8] {
        let pointer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { pointer.deallocate() }
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        try body(pointer)
        return Array(UnsafeRawBufferPointer(start: pointer, count: size))
    }

    private func string(_ body: (UnsafeMutablePointer<CChar>, UInt32) throws(AttestationError) -> Void) throws(AttestationError) -> String {
        let bytes = try buffer(256) { pointer throws(AttestationError) in
            try body(pointer.bindMemory(to: CChar.self, capacity: 256), 255)
        }
        return String(decoding: bytes.prefix(while: { $0 != 0 }), as: UTF8.self)
    }

    private static func uint32(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16 | UInt32(bytes[offset + 3]) << 24
    }

    private static func architectureName(_ value: UInt32) -> String {
        switch value {
        case 9: return "Hopper"
        case 10: return "Blackwell"
        default: return "UNKNOWN(\(value))"
        }
    }
}

/// Lower-case hex, as Rust's `hex::encode` writes it.
func hex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count * 2)
    for byte in bytes {
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 0xF)])
    }
    return String(decoding: out, as: UTF8.self)
}
