import Foundation
import ObjectStore
import OSSProtocol
import Testing

@Suite struct XMLTests {
    let page = """
        <?xml version="1.0" encoding="UTF-8"?>
        <ListBucketResult>
          <Name>models</Name>
          <Prefix>qwen%2F</Prefix>
          <MaxKeys>2</MaxKeys>
          <EncodingType>url</EncodingType>
          <IsTruncated>true</IsTruncated>
          <NextContinuationToken>CgJiYw%3D%3D</NextContinuationToken>
          <Contents>
            <Key>qwen%2Fgocryptfs.conf</Key>
            <LastModified>2026-11-20T08:00:00.000Z</LastModified>
            <ETag>"5B3C1A2E053D763E1B002CC607C5A0FE"</ETag>
            <Type>Normal</Type>
            <Size>383</Size>
            <StorageClass>Standard</StorageClass>
          </Contents>
          <Contents>
            <Key>qwen%2F%E6%A8%A1%E5%9E%8B%2Fa%2Bb%20c</Key>
            <ETag>"0F7230CAA4BE94CCBDC99C5500000000-2"</ETag>
            <Size>6442450944</Size>
          </Contents>
        </ListBucketResult>
        """

    @Test func parsesAURLEncodedPage() throws {
        let parsed = try OSSXML.listPage(Data(page.utf8))
        #expect(parsed.objects == [
            ObjectSummary(key: "qwen/gocryptfs.conf", size: 383, etag: "\"5B3C1A2E053D763E1B002CC607C5A0FE\""),
            ObjectSummary(key: "qwen/模型/a+b c", size: 6_442_450_944, etag: "\"0F7230CAA4BE94CCBDC99C5500000000-2\""),
        ])
        #expect(parsed.nextContinuationToken == "CgJiYw==")
    }

    @Test(arguments: [
        "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>",
        "<ListBucketResult><Contents><Key>a</Key><Size>x</Size><ETag>e</ETag></Contents></ListBucketResult>",
        "<ListBucketResult><Contents><Key>a</Key>",
        "<Error><Code>AccessDenied</Code></Error>",
        "",
        "not xml at all",
        "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><ListBucketResult>&e;</ListBucketResult>",
        "<ListBucketResult><Contents></Key></Contents></ListBucketResult>",
        "<ListBucketResult></ListBucketResult><ListBucketResult></ListBucketResult>",
        "<ListBucketResult>&bogus;</ListBucketResult>",
    ])
    func malformedListingsAreErrors(text: String) {
        #expect(throws: OSSXML.ParseError.self) { try OSSXML.listPage(Data(text.utf8)) }
    }

    @Test func errorDocumentsAndHeadErrors() {
        let body = """
            <?xml version="1.0" encoding="UTF-8"?>
            <Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message>
            <RequestId>65A0B4C3D2E1F0</RequestId><HostId>models.oss-cn-beijing.aliyuncs.com</HostId></Error>
            """
        let error = OSSXML.error(Data(body.utf8), status: 403)
        #expect(error.code == "SignatureDoesNotMatch" && error.requestID == "65A0B4C3D2E1F0" && error.isPermanent)
        #expect(error.description.contains("403 SignatureDoesNotMatch"))
        let head = OSSXML.headError(header: Data(body.utf8).base64EncodedString(), status: 403)
        #expect(head == error)
        let plain = OSSXML.error(Data("<html>bad gateway</html>".utf8), status: 502, requestID: "r1")
        #expect(plain.code == "HTTP502" && !plain.isPermanent && plain.requestID == "r1")
    }

    /// What a parser of OSS's answers must read: the declaration, attributes (xmlns), entities, character
    /// references, CDATA, comments and empty elements.
    @Test func readsEntitiesReferencesCDATAAndAttributes() throws {
        let body = """
            <?xml version="1.0" encoding="UTF-8"?>
            <!-- a comment -->
            <ListBucketResult xmlns="http://doc.oss-cn-hangzhou.aliyuncs.com" a='x>y'>
              <Contents><Key>a&amp;b &lt;c&gt; &quot;d&quot; &apos;e&apos; &#x6A21;&#22411;</Key><Size>1</Size>
                <ETag><![CDATA["etag<1>"]]></ETag><Owner/></Contents>
              <IsTruncated>false</IsTruncated>
            </ListBucketResult>
            """
        let page = try OSSXML.listPage(Data(body.utf8))
        #expect(page.objects == [ObjectSummary(key: "a&b <c> \"d\" 'e' 模型", size: 1, etag: "\"etag<1>\"")])
        #expect(page.nextContinuationToken == nil)
    }
}
