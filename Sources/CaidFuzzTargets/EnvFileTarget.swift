import CaidConfiguration

extension FuzzTarget {
    /// cai.env: the env-file syntax and every setting's decoding, as `caid` reads the file (no file is opened).
    static let envFile = FuzzTarget(name: "env", maxLength: 8192) { bytes in
        _ = CaidConfig.decode(Array(bytes), file: "cai.env")
    }
}
