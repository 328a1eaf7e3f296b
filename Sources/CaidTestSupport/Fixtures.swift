import CaidBase
import Foundation

/// The cai.env template of the CAI deployment guide, shaped as operators have it: a Chinese comment above every key,
/// double quotes, the empty session token and the commented-out peer line.
public let caiTemplate = """
    # Trustee服务地址（KBS与AS共用的负载均衡地址）
    TRUSTEE_URL="http://alb-xxxxxxxxx.cn-beijing.alb.aliyuncsslb.com/xxxx/"
    # Trustee策略名称
    TRUSTEE_POLICY="default"
    # 模型解密密钥在KBS中的资源ID
    MODEL_KEY_ID="kbs:///default/aliyun/model-decryption-key"
    # 模型加密方式：gocryptfs 或 sam
    MODEL_ENCRYPTION_METHOD="gocryptfs"
    # 加密模型所在的OSS Bucket及路径
    MODEL_OSS_BUCKET_PATH="bucket_name:/path_of_model_ciphertext"
    # OSS Endpoint
    MODEL_OSS_ENDPOINT="https://oss-cn-beijing-internal.aliyuncs.com"
    # 访问OSS的AccessKey ID
    MODEL_OSS_ACCESS_KEY_ID="<oss access key id>"
    # 访问OSS的AccessKey Secret
    MODEL_OSS_SECRET_ACCESS_KEY="<oss access key secret>"
    # 使用STS临时凭证时填写SessionToken，否则留空
    MODEL_OSS_SESSION_TOKEN=
    # 模型共享组内其他节点的IP，以空格分隔（可选）
    # MODEL_SHARING_PEER="172.30.xxx.xxx 172.30.xxx.xxx"
    # 推理服务端口
    MODEL_SERVICE_PORT=8080
    # 模型解密后的挂载点
    MODEL_MOUNT_POINT=/tmp/model

    """

/// A directory under the system's temporary directory, removed by ``remove()``.
public struct TemporaryDirectory: Sendable {
    public let path: String

    public init(_ prefix: String = "caid-test") throws {
        var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ $0.baseAddress.flatMap { mkdtemp($0) } }) else {
            throw CocoaError(.fileWriteUnknown)
        }
        path = String(cString: made)
    }

    /// Writes `contents` to `name` inside the directory with `mode`, and returns the path.
    @discardableResult
    public func write(_ name: String, _ contents: String, mode: Int = 0o600) throws -> String {
        let file = path + "/" + name
        try Data(contents.utf8).write(to: URL(fileURLWithPath: file))
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: file)
        return file
    }

    public func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Random damage for parsers of untrusted bytes: one to four bytes changed, removed or inserted.
public enum Mutation {
    public static func of(_ original: [UInt8], using generator: inout some RandomNumberGenerator) -> [UInt8] {
        var bytes = original
        for _ in 0..<Int.random(in: 1...4, using: &generator) where !bytes.isEmpty {
            let index = Int.random(in: 0..<bytes.count, using: &generator)
            switch Int.random(in: 0..<3, using: &generator) {
            case 0: bytes[index] = UInt8.random(in: 0...255, using: &generator)
            case 1: bytes.remove(at: index)
            default: bytes.insert(UInt8.random(in: 0x20...0x7E, using: &generator), at: index)
            }
        }
        return bytes
    }
}
