import CNVML
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

/// The few NVML entry points caid uses, resolved with dlsym; their types and the structs they fill are nvml.h's
/// (`CNVML`).
private struct NVML {
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

    private func check(_ status: nvmlReturn_t, _ call: String) throws(AttestationError) {
        guard status != NVML_SUCCESS else { return }
        let text = (try? symbol("nvmlErrorString", as: caid_nvmlErrorString_fn.self))?(status).map { String(cString: $0) }
            ?? "error \(status.rawValue)"
        throw AttestationError(.gpu, "NVML \(call) failed: \(text)")
    }

    func collect(nonce: [UInt8]) throws(AttestationError) -> GPUAttester.Collection? {
        try check(try symbol("nvmlInit_v2", as: caid_nvmlInit_v2_fn.self)(), "nvmlInit_v2")
        defer { _ = (try? symbol("nvmlShutdown", as: caid_nvmlShutdown_fn.self))?() }
        var count: UInt32 = 0
        try check(try symbol("nvmlDeviceGetCount_v2", as: caid_nvmlDeviceGetCount_v2_fn.self)(&count), "nvmlDeviceGetCount_v2")
        guard count > 0 else { return nil }
        let driverVersionFn = try symbol("nvmlSystemGetDriverVersion", as: caid_nvmlSystemGetDriverVersion_fn.self)
        let driverVersion = try string { buffer, size throws(AttestationError) in
            try check(driverVersionFn(buffer, size), "nvmlSystemGetDriverVersion")
        }
        var state = nvmlConfComputeSystemState_t()
        try check(try symbol("nvmlSystemGetConfComputeState", as: caid_nvmlSystemGetConfComputeState_fn.self)(&state),
                  "nvmlSystemGetConfComputeState")
        // Without CC mode a GPU's report proves nothing about confidentiality: send no GPU evidence at all.
        guard state.ccFeature == UInt32(NVML_CC_SYSTEM_FEATURE_ENABLED) else { return nil }

        let handleFn = try symbol("nvmlDeviceGetHandleByIndex_v2", as: caid_nvmlDeviceGetHandleByIndex_v2_fn.self)
        let uuidFn = try symbol("nvmlDeviceGetUUID", as: caid_nvmlDeviceGetUUID_fn.self)
        let nameFn = try symbol("nvmlDeviceGetName", as: caid_nvmlDeviceGetName_fn.self)
        let vbiosFn = try symbol("nvmlDeviceGetVbiosVersion", as: caid_nvmlDeviceGetVbiosVersion_fn.self)
        let archFn = try symbol("nvmlDeviceGetArchitecture", as: caid_nvmlDeviceGetArchitecture_fn.self)
        let reportFn = try symbol("nvmlDeviceGetConfComputeGpuAttestationReport", as: caid_nvmlDeviceGetConfComputeGpuAttestationReport_fn.self)
        let certFn = try symbol("nvmlDeviceGetConfComputeGpuCertificate", as: caid_nvmlDeviceGetConfComputeGpuCertificate_fn.self)

        var devices: [GPUAttester.Device] = []
        var missing: [GPUAttester.MissingDevice] = []
        for index in 0..<count {
            var uuid = "unknown UUID"
            do throws(AttestationError) {
                var device: nvmlDevice_t?
                try check(handleFn(index, &device), "nvmlDeviceGetHandleByIndex_v2(\(index))")
                uuid = try string { buffer, size throws(AttestationError) in try check(uuidFn(device, buffer, size), "nvmlDeviceGetUUID") }
                let name = try string { buffer, size throws(AttestationError) in try check(nameFn(device, buffer, size), "nvmlDeviceGetName") }
                let vbios = try string { buffer, size throws(AttestationError) in try check(vbiosFn(device, buffer, size), "nvmlDeviceGetVbiosVersion") }
                var arch: nvmlDeviceArchitecture_t = 0
                try check(archFn(device, &arch), "nvmlDeviceGetArchitecture")

                // 12 KiB and 9 KiB: on the heap, not the stack of the thread `Blocking.run` gives.
                let report = UnsafeMutablePointer<nvmlConfComputeGpuAttestationReport_t>.allocate(capacity: 1)
                defer { report.deallocate() }
                report.initialize(to: nvmlConfComputeGpuAttestationReport_t())
                withUnsafeMutableBytes(of: &report.pointee.nonce) { $0.copyBytes(from: nonce.prefix(32)) }
                try check(reportFn(device, report), "nvmlDeviceGetConfComputeGpuAttestationReport")
                let reportSize = min(Int(report.pointee.attestationReportSize), Int(NVML_CC_GPU_ATTESTATION_REPORT_SIZE))

                let certificate = UnsafeMutablePointer<nvmlConfComputeGpuCertificate_t>.allocate(capacity: 1)
                defer { certificate.deallocate() }
                certificate.initialize(to: nvmlConfComputeGpuCertificate_t())
                try check(certFn(device, certificate), "nvmlDeviceGetConfComputeGpuCertificate")
                let chainSize = min(Int(certificate.pointee.attestationCertChainSize), Int(NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE))

                devices.append(GPUAttester.Device(
                    index: Int(index), uuid: uuid, name: name, architecture: Self.architectureName(arch), vbiosVersion: vbios,
                    ccEnabled: true,
                    report: Array(UnsafeBufferPointer(start: caid_nvml_attestation_report(report), count: reportSize)),
                    certificateChain: Array(UnsafeBufferPointer(start: caid_nvml_attestation_cert_chain(certificate), count: chainSize))))
            } catch {
                missing.append(GPUAttester.MissingDevice(index: Int(index), uuid: uuid, reason: error.message))
            }
        }
        return GPUAttester.Collection(driverVersion: driverVersion, devices: devices, missing: missing, collected: Date())
    }

    /// A NUL-terminated string NVML writes into a zeroed buffer, larger than every string buffer size nvml.h gives
    /// for what caid reads (96 at most).
    private func string(_ body: (UnsafeMutablePointer<CChar>, UInt32) throws(AttestationError) -> Void) throws(AttestationError) -> String {
        let size = 256
        let pointer = UnsafeMutablePointer<CChar>.allocate(capacity: size)
        defer { pointer.deallocate() }
        pointer.initialize(repeating: 0, count: size)
        try body(pointer, UInt32(size - 1))
        return String(decoding: UnsafeRawBufferPointer(start: pointer, count: size).prefix(while: { $0 != 0 }), as: UTF8.self)
    }

    private static func architectureName(_ value: nvmlDeviceArchitecture_t) -> String {
        switch Int32(bitPattern: value) {
        case NVML_DEVICE_ARCH_HOPPER: return "Hopper"
        case NVML_DEVICE_ARCH_BLACKWELL: return "Blackwell"
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
