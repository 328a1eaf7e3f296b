import CTDXGuest
import Foundation

/// RTMR3, the TDX runtime measurement register the attestation agent extends (CC-MR index 4; its default PCR 17).
public protocol RuntimeRegister: Sendable {
    /// How it is reached, for health and `caid attest`.
    var interface: String { get }
    /// The register's 48 bytes now.
    func read() throws(AttestationError) -> [UInt8]
    /// `RTMR3 = SHA384(RTMR3 ‖ digest)`, done by the TDX module.
    func extend(_ digest: [UInt8]) throws(AttestationError)
}

/// The kernel's interface since Linux 6.16: `/sys/devices/virtual/misc/tdx_guest/measurements/rtmr3:sha384`, 48
/// raw bytes read, and a write of exactly 48 bytes at offset 0 extends (torvalds/linux
/// `Documentation/ABI/testing/sysfs-devices-virtual-misc-tdx_guest`, `drivers/virt/coco/guest/tsm-mr.c`; a read
/// after a write is fresh, the register being `TSM_MR_F_LIVE`).
public struct SysfsRTMR: RuntimeRegister {
    public static let defaultDirectory = "/sys/devices/virtual/misc/tdx_guest/measurements"
    public let path: String

    /// - Parameter directory: where `rtmr3:sha384` is (`CAID_RTMR_DIR`).
    public init(directory: String = Self.defaultDirectory) {
        path = directory + "/rtmr3:sha384"
    }

    /// Whether the file is there (a TDX guest with Linux 6.16 or later).
    public var isAvailable: Bool { access(path, F_OK) == 0 }

    public var interface: String { "sysfs \(path)" }

    public func read() throws(AttestationError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw AttestationError(.tee, "cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var value = [UInt8](repeating: 0, count: 48)
        let count = value.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 48, 0) }
        guard count == 48 else {
            throw AttestationError(.tee, "cannot read \(path): \(count < 0 ? String(cString: strerror(errno)) : "\(count) bytes, not 48")")
        }
        return value
    }

    public func extend(_ digest: [UInt8]) throws(AttestationError) {
        guard digest.count == 48 else { throw AttestationError(.tee, "an RTMR extend takes 48 bytes, not \(digest.count)") }
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw AttestationError(.tee, "cannot open \(path) to extend RTMR3: \(String(cString: strerror(errno))); caid must run as root") }
        defer { close(fd) }
        let written = digest.withUnsafeBytes { pwrite(fd, $0.baseAddress, 48, 0) }
        guard written == 48 else {
            throw AttestationError(.tee, "cannot extend RTMR3 through \(path): \(written < 0 ? String(cString: strerror(errno)) : "short write")")
        }
    }
}

/// Kernels before 6.16 that carry Intel's `TDX_CMD_EXTEND_RTMR` ioctl on `/dev/tdx_guest` (intel/tdx, the Anolis
/// cloud-kernel fork; their handler refuses RTMR0 and 1). They have no way to read an RTMR but a TD report, so RTMR3
/// is read from a fresh configfs-tsm quote (its TD report body holds RTMR0–3; RTMR3 at quote bytes 520..<568 of a v4
/// quote, before REPORTDATA at 568).
public struct IoctlRTMR: RuntimeRegister {
    public static let defaultDevice = "/dev/tdx_guest"
    public let device: String
    private let quotes: TDXAttester

    public init(device: String = Self.defaultDevice, quotes: TDXAttester) {
        self.device = device
        self.quotes = quotes
    }

    public var isAvailable: Bool { access(device, F_OK) == 0 }

    public var interface: String { "ioctl TDX_CMD_EXTEND_RTMR on \(device)" }

    public func read() throws(AttestationError) -> [UInt8] {
        let quote = try quotes.quote(reportData: [UInt8](repeating: 0, count: 64))
        guard quote.count >= 632 else { throw AttestationError(.tee, "the TDX quote is \(quote.count) bytes; too short to hold RTMR3") }
        return Array(quote[520..<568])
    }

    public func extend(_ digest: [UInt8]) throws(AttestationError) {
        guard digest.count == 48 else { throw AttestationError(.tee, "an RTMR extend takes 48 bytes, not \(digest.count)") }
        let fd = open(device, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw AttestationError(.tee, "cannot open \(device) to extend RTMR3: \(String(cString: strerror(errno))); caid must run as root") }
        defer { close(fd) }
        let failure = digest.withUnsafeBufferPointer { caid_tdx_extend_rtmr(fd, $0.baseAddress, 3) }
        guard failure == 0 else {
            throw AttestationError(.tee, "cannot extend RTMR3 through \(device): \(String(cString: strerror(failure))) (this kernel may not carry TDX_CMD_EXTEND_RTMR; Linux 6.16 and later have the sysfs interface)")
        }
    }
}
