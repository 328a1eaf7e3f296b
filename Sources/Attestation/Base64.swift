import CaidBase
import Foundation

/// The base64 forms JOSE and the attestation evidence use. Decoding is lenient about padding only; any other
/// stray character makes it fail. The URL-safe form is ``Base64URL``'s, shared with the gocryptfs names.
public enum Base64 {
    /// Standard alphabet with padding, as the TDX and sample evidence carry quotes and report data.
    public static func standard(_ bytes: some Collection<UInt8>) -> String {
        Data(bytes).base64EncodedString()
    }

    /// URL-safe alphabet without padding (RFC 7515 `base64url`).
    public static func url(_ bytes: some Collection<UInt8>) -> String {
        Base64URL.encode(bytes, padded: false)
    }

    /// Decodes `base64url`, with or without padding.
    public static func decodeURL(_ text: some StringProtocol) -> [UInt8]? {
        Base64URL.decodeEitherPadding(text)
    }

    /// Decodes standard base64, with or without padding.
    public static func decodeStandard(_ text: some StringProtocol) -> [UInt8]? {
        var padded = String(text)
        while padded.utf8.count % 4 != 0 { padded += "=" }
        return Data(base64Encoded: padded).map { Array($0) }
    }
}
