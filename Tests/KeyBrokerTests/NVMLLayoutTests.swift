import CNVML
import Testing

/// The structs `CNVML` declares, against the layout nvml.h documents (r535 to 13.3: three or two `unsigned int`s,
/// then byte arrays of the `NVML_*_SIZE` macros, no padding). A wrong field here would make NVML write past the
/// attester's buffer or caid read the report from the wrong place, which the fake NVML cannot show: it is built
/// from its own copy of the layout.
@Suite struct NVMLLayoutTests {
    @Test func attestationReportIsLaidOutAsInNVMLHeader() {
        typealias Report = nvmlConfComputeGpuAttestationReport_t
        #expect(MemoryLayout<Report>.size == 3 * 4 + 0x20 + 0x2000 + 0x1000)
        #expect(MemoryLayout<Report>.alignment == 4)
        #expect(MemoryLayout<Report>.offset(of: \.isCecAttestationReportPresent) == 0)
        #expect(MemoryLayout<Report>.offset(of: \.attestationReportSize) == 4)
        #expect(MemoryLayout<Report>.offset(of: \.cecAttestationReportSize) == 8)
        #expect(MemoryLayout<Report>.offset(of: \.nonce) == 12)
        #expect(MemoryLayout<Report>.offset(of: \.cecAttestationReport) == 44 + 0x2000)
        var report = Report()
        #expect(withUnsafeBytes(of: &report.nonce) { $0.count } == Int(NVML_CC_GPU_CEC_NONCE_SIZE))
        #expect(withUnsafeBytes(of: &report.cecAttestationReport) { $0.count } == Int(NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE))
        // Swift does not import the 8 KiB array; the shim's accessor gives C's offset.
        #expect(withUnsafePointer(to: &report) { UnsafeRawPointer(caid_nvml_attestation_report($0)) - UnsafeRawPointer($0) } == 44)
        #expect(NVML_CC_GPU_ATTESTATION_REPORT_SIZE == 0x2000)
    }

    @Test func certificateIsLaidOutAsInNVMLHeader() {
        typealias Certificate = nvmlConfComputeGpuCertificate_t
        #expect(MemoryLayout<Certificate>.size == 2 * 4 + 0x1000 + 0x1400)
        #expect(MemoryLayout<Certificate>.offset(of: \.certChainSize) == 0)
        #expect(MemoryLayout<Certificate>.offset(of: \.attestationCertChainSize) == 4)
        #expect(MemoryLayout<Certificate>.offset(of: \.certChain) == 8)
        var certificate = Certificate()
        #expect(withUnsafeBytes(of: &certificate.certChain) { $0.count } == Int(NVML_GPU_CERT_CHAIN_SIZE))
        #expect(withUnsafePointer(to: &certificate) {
            UnsafeRawPointer(caid_nvml_attestation_cert_chain($0)) - UnsafeRawPointer($0)
        } == 8 + 0x1000)
        #expect(NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE == 0x1400)
    }

    @Test func systemStateAndReturnCodesAreNVMLs() {
        #expect(MemoryLayout<nvmlConfComputeSystemState_t>.size == 12)
        #expect(MemoryLayout<nvmlConfComputeSystemState_t>.offset(of: \.ccFeature) == 4)
        #expect(NVML_CC_SYSTEM_FEATURE_ENABLED == 1)
        #expect(MemoryLayout<nvmlReturn_t>.size == 4)
        #expect(NVML_SUCCESS.rawValue == 0)
        #expect(NVML_ERROR_NOT_SUPPORTED.rawValue == 3)
        #expect(NVML_ERROR_UNKNOWN.rawValue == 999)
        #expect(NVML_DEVICE_ARCH_HOPPER == 9)
        #expect(NVML_DEVICE_ARCH_BLACKWELL == 10)
        #expect(MemoryLayout<nvmlDevice_t>.size == MemoryLayout<UnsafeRawPointer>.size)
    }
}
