#!/usr/bin/env python3
"""Writes the hand-made seeds of Fuzz/corpus: real samples of each input caid parses, in the shapes the peers in
Tests/peers send them. The seeds that need caid's own keys or encoders (encrypted blocks and names, attested
certificates, signed tokens) come from `caid-fuzz seeds Fuzz/corpus` instead. Run from the repository root:
    python3 Fuzz/make_seeds.py Fuzz/corpus
Random keys and nonces: rerunning changes the bytes of the JWE seeds, not their shape."""
import base64, hashlib, json, os, secrets, sys

from cryptography.hazmat.primitives import keywrap
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwcrypto import jwe, jwk
import h2.config, h2.connection

out = sys.argv[1]


def put(target, name, data):
    os.makedirs(os.path.join(out, target), exist_ok=True)
    with open(os.path.join(out, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


# cai.env: the shipped example, and the syntax corners of systemd's EnvironmentFile=.
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(root, "etc/caid/cai.env.example"), "rb") as f:
    put("env", "example", f.read())
put("env", "syntax", 'TRUSTEE_URL=http://10.0.0.2:8080/\nMODEL_KEY_ID="kbs:///default/aliyun/key" # note\n'
    "MODEL_OSS_SECRET_ACCESS_KEY='single quoted \\' value'\nexport CAID_LOG_LEVEL=debug\n"
    'CAID_GATEWAY_PORT="4\\\n3"\nSHARING_PEERS="10.0.0.3 10.0.0.4"\n#CAID_X=1\n\n  CAID_MOUNT_POINT = /run/caid/model\n')

# gocryptfs.conf as gocryptfs 2.3 writes it.
put("gocryptfs-conf", "gocryptfs-2.3", """{
\t"Creator": "gocryptfs 2.3",
\t"EncryptedKey": "4gGdcVL9T97IeRaToc+vZ9iqbA4cXBvkXQg0dTkpMiwQGhWKdm9CoLdE/VS4mMXi421GWD6HGw0kkFg1r5c1CA==",
\t"ScryptObject": {
\t\t"Salt": "VuDO/OSekgASTYXBSJLtmgpN0VWXVjUnInAeFUYbrAw=",
\t\t"N": 65536,
\t\t"R": 8,
\t\t"P": 1,
\t\t"KeyLen": 32
\t},
\t"Version": 2,
\t"FeatureFlags": [
\t\t"HKDF",
\t\t"GCMIV128",
\t\t"DirIV",
\t\t"EMENames",
\t\t"LongNames",
\t\t"Raw64"
\t]
}
""")

# OSS ListObjectsV2 pages and error bodies (OSS's own shape, as Tests/peers/oss_server.py answers).
put("oss-listing", "url-encoded", """<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://doc.oss-cn-hangzhou.aliyuncs.com">
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
</ListBucketResult>""")
put("oss-listing", "plain-last-page", '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult><Name>b</Name>'
    "<Prefix>m/</Prefix><IsTruncated>false</IsTruncated><!-- c --><Contents><Key><![CDATA[m/a&b]]></Key>"
    "<ETag>&quot;AB&#x43;&#68;&quot;</ETag><Size>0</Size></Contents><Contents/></ListBucketResult>")
put("oss-error", "access-denied", '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    "<Message>The bucket you access does not belong to you.</Message><RequestId>5C3D9175B6FC201293AD4890</RequestId>"
    "<HostId>models.oss-cn-beijing.aliyuncs.com</HostId></Error>")
put("oss-error", "head-header", base64.b64encode(b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
    b"<Message>The specified key does not exist.</Message><RequestId>64D0E1</RequestId></Error>"))

# KBS answers: challenges of both dialects, an /attest answer, Trustee's typed errors.
put("kbs-json", "challenge-legacy", '{"nonce":"ZpHX0lM2lrqTs2ZyvYXlEq9hJ6Tk0m0x0Qe0o7H3pWs=","extra-params":""}')
put("kbs-json", "challenge-current", '{"nonce":"q2Xh1m","extra-params":{"selected-hash-algorithm":"SHA384"}}')
put("kbs-json", "attest-token", json.dumps({"token": "eyJhbGciOiJSUzM4NCJ9." + b64u(json.dumps({"exp": 1796086800, "tee": "tdx", "jwk": {"kty": "RSA"}}).encode()) + ".c2ln"}))
put("kbs-json", "error-policy", '{"type":"https://github.com/confidential-containers/kbs/errors/PolicyDeny","detail":"Resource policy denied"}')
put("kbs-json", "error-version", '{"type":"https://github.com/confidential-containers/kbs/errors/ProtocolVersion","detail":"KBS Client Protocol Version Mismatch: expect 0.1.0"}')

# JWEs in every layout caid reads (the encryptions of Tests/peers/trustee_server.py).
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
cek, iv = secrets.token_bytes(32), secrets.token_bytes(12)
put("jwe", "legacy-rsa1_5", json.dumps({
    "protected": json.dumps({"alg": "RSA1_5", "enc": "A256GCM"}, separators=(",", ":")),
    "encrypted_key": b64u(rsa_key.public_key().encrypt(cek, padding.PKCS1v15())),
    "iv": b64u(iv), "ciphertext": b64u(AESGCM(cek).encrypt(iv, b"model-password", None)), "tag": ""}))


def concat_kdf(z, alg, bits):
    return hashlib.sha256((1).to_bytes(4, "big") + z + len(alg).to_bytes(4, "big") + alg.encode()
                          + (0).to_bytes(4, "big") * 2 + bits.to_bytes(4, "big")).digest()[: bits // 8]


peer, ephemeral = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
numbers = ephemeral.public_key().public_numbers()
header = {"alg": "ECDH-ES+A256KW", "enc": "A256GCM",
          "epk": {"crv": "P-256", "kty": "EC", "x": b64u(numbers.x.to_bytes(32, "big")), "y": b64u(numbers.y.to_bytes(32, "big"))}}
protected = b64u(json.dumps(header, separators=(",", ":")).encode())
kek = concat_kdf(ephemeral.exchange(ec.ECDH(), peer.public_key()), "ECDH-ES+A256KW", 256)
sealed = AESGCM(cek).encrypt(iv, b"model-password", protected.encode())
put("jwe", "trustee-ecdh", json.dumps({"protected": protected, "encrypted_key": b64u(keywrap.aes_key_wrap(kek, cek)),
                                       "iv": b64u(iv), "ciphertext": b64u(sealed[:-16]), "tag": b64u(sealed[-16:])}))
for alg, key in [("RSA-OAEP-256", jwk.JWK.generate(kty="RSA", size=2048)), ("ECDH-ES+A256KW", jwk.JWK.generate(kty="EC", crv="P-256"))]:
    token = jwe.JWE(b"model-password", protected=json.dumps({"alg": alg, "enc": "A256GCM"}), algs=[alg, "A256GCM"])
    token.add_recipient(key)
    put("jwe", "jwcrypto-" + alg.lower(), token.serialize())

# Requests to caid tunnel's HTTP proxy.
put("proxy-head", "connect", "CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\nProxy-Connection: keep-alive\r\n\r\n\x16\x03\x01")
put("proxy-head", "absolute-get", "GET http://10.0.0.1:8000/v1/models?x=1 HTTP/1.1\r\nHost: 10.0.0.1:8000\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nAccept: */*\r\n\r\n")
put("proxy-head", "pipelined-post", "POST /v1/chat/completions HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: application/json\r\n"
    "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n1\r\n1\r\n0\r\n\r\nGET / HTTP/1.0\r\nHost: [::1]:8080\r\n\r\n")
put("proxy-head", "recursion", "GET / HTTP/1.1\r\nHost: api.example.com\r\nX-Tng-Http-Forward: true\r\nContent-Length: 2\r\n\r\nhi")

# What a TNG client sends the gateway after TLS: SETTINGS, a CONNECT stream with DATA, a second stream reset, a GET.
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
conn.initiate_connection()
conn.send_headers(1, [(":method", "CONNECT"), (":authority", "tng.internal")])
conn.send_data(1, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
conn.send_headers(3, [(":method", "CONNECT"), (":authority", "tng.internal")])
conn.reset_stream(3)
conn.send_headers(5, [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "tng.internal")], end_stream=True)
conn.ping(b"12345678")
frames = conn.data_to_send()
preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
put("connect-headers", "tng-streams", frames[len(preface):] if frames.startswith(preface) else frames)
