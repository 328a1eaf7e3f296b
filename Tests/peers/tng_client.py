#!/usr/bin/env python3
"""An independent TNG 2.2.1 ingress (client) for interop tests of caid's gateway, written from TNG v2.2.1 and
rats-rs (see shared/reference/tng-wire.md) with other libraries than caid: Python ssl (OpenSSL), `cryptography`
for X.509, `cbor2` for the evidence, `jwcrypto` for the token, `h2` for HTTP/2.

It connects with TLS 1.3 and ALPN h2, takes the server's self-signed certificate, checks the self-signature, the DICE
evidence extension (2.23.133.5.4.9, CBOR tag 0xC0C000) and that the evidence binds the certificate's key, asks the
Attestation Service (verification_requests of Trustee >= 1.6, falling back on "missing field `tee`" to the
flat request of <= 1.5.2, as TNG's converter does; 2.2.1 itself sends only the flat one), checks the RS384 "simple" token (signature with its jwk,
exp/nbf, runtime data, every policy id), and then sends one HTTP/1.1 request per CONNECT stream, `--streams` of
them at once on the one connection. Prints a JSON report; exits 0 when everything held, 1 otherwise.

When the client checks the server (TNG's source decides, and it changed):
  --verify-in-handshake  TNG <= 2.2.4: rustls' verify_server_cert blocks on rats-cert verify_der, which calls the AS,
                         so the client's Finished is held until the AS has answered (tng/src/tunnel/cert_verifier.rs
                         @ v2.2.4). Done here with memory BIOs: the Finished waits in the outgoing BIO.
  (default)              TNG >= 2.2.5: the certificate is kept during the handshake and verified right after it,
                         before the HTTP/2 preface (cert_verifier.rs `verity_pending_cert` and
                         ingress/protocol/rats_tls/security/mod.rs @ v2.2.6).
  --passport             TNG >= 2.2.5 `verify.model = passport`: the certificate carries an AS token (CBOR tag
                         0xC0C001 over [token, claims], rats-cert tee/coco/evidence.rs @ 15690513), checked against
                         the AS's public key (--as-public-key, a JWK) without calling the AS.
--source ADDR connects from that local address (127.0.0.2 is a second source on loopback). --no-request opens the
CONNECT streams and sends nothing on them (an idle stream). A reset stream reports its error code and when it came.
--hold N keeps the connection silent after the tunnel for up to N seconds and reports when the server closed it.

When the AS refuses (any error status, e.g. a policy that rejects the evidence: 500 "Reject by policy <id>",
openanolis/trustee attestation-service/src/token/simple.rs and src/bin/restful/mod.rs), the report carries
`"as_error": "<status> <body>"` next to `error`, and the exit status is 1.

Negative modes: --tls12 (offer only TLS 1.2), --no-alpn, --method GET (a non-CONNECT request), --stall (open TCP,
send half a ClientHello, or with --silent nothing, and report how long the server keeps it), --skip-verify (tunnel without checking attestation).
"""
import argparse, base64, hashlib, json, socket, ssl, sys, threading, time, urllib.error, urllib.request

import cbor2
import h2.config, h2.connection, h2.events
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk, jws

EVIDENCE_OID = "2.23.133.5.4.9"
HASHES = {1: hashlib.sha256, 7: hashlib.sha384, 8: hashlib.sha512}


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_certificate(der):
    """rats-cert verify.rs: self-signed with a P-256 key, DICE extension present. Returns the tagged CBOR and SPKI."""
    cert = x509.load_der_x509_certificate(der)
    if cert.issuer != cert.subject:
        raise ValueError("issuer differs from subject")
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise ValueError("not a P-256 key")
    public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    value = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(EVIDENCE_OID)).value.value
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cbor2.loads(value), spki


def bound_runtime(claims_buffer, spki):
    """The pubkey-hash claim must hash the certificate's key; the runtime data is then fixed by the claims."""
    claims = cbor2.loads(claims_buffer)
    hash_id, digest = cbor2.loads(claims["pubkey-hash"])
    if HASHES[hash_id](spki).digest() != digest:
        raise ValueError("pubkey-hash does not match the certificate key")
    return {"rats-rs.raw_runtime_data": b64u(hashlib.sha256(claims_buffer).digest())}


def verify_certificate(der):
    """Background check: CBOR tag 0xC0C000 over [raw evidence, claims]; the evidence binds the key."""
    tagged, spki = load_certificate(der)
    if not isinstance(tagged, cbor2.CBORTag) or tagged.tag != 0xC0C000:
        raise ValueError("evidence is not CBOR tag 0xC0C000")
    raw_evidence, claims_buffer = tagged.value
    raw = cbor2.loads(raw_evidence)
    expected_runtime = bound_runtime(claims_buffer, spki)
    runtime = json.loads(raw["aa_runtime_data"])
    if runtime != expected_runtime:
        raise ValueError("aa_runtime_data %r does not bind the claims" % raw["aa_runtime_data"])
    if raw["aa_runtime_data_hash_algo"] != 7:
        raise ValueError("runtime data hash is not sha384")
    return raw, expected_runtime, len(der)


class ASRefused(Exception):
    """The Attestation Service answered an error status (a policy refusal is 500 "Reject by policy <id>")."""

    def __init__(self, status, body):
        super().__init__("AS refused: %s %s" % (status, body))
        self.status, self.body = status, body


def ask_as(as_addr, raw, runtime, policies):
    """rats-cert converter/restful.rs: POST {as}/attestation; fall back to verification_requests."""
    url = as_addr.rstrip("/") + "/attestation"
    request = {"tee": raw["tee_type"], "evidence": b64u(raw["aa_evidence"]), "runtime_data": {"structured": runtime},
               "init_data": None, "runtime_data_hash_algorithm": "sha384", "init_data_hash_algorithm": None,
               "policy_ids": policies}
    def post(body):
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        # rats-cert's reqwest client has no overall timeout (converter/restful.rs); 40 s bounds the test.
        with urllib.request.urlopen(req, timeout=40) as response:
            return response.read().decode()
    newer = {"verification_requests": [{k: request[k] for k in ("tee", "evidence", "runtime_data", "init_data", "runtime_data_hash_algorithm")}],
             "policy_ids": policies}
    try:
        return post(newer)
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        if "missing field `tee`" not in text:
            raise ASRefused(error.code, text)
    try:
        return post(request)
    except urllib.error.HTTPError as error:
        raise ASRefused(error.code, error.read().decode(errors="replace"))


def verify_passport_certificate(der, pinned, policies):
    """Passport: CBOR tag 0xC0C001 over [token (UTF-8 JWT), claims]; the token binds the key, checked offline."""
    tagged, spki = load_certificate(der)
    if not isinstance(tagged, cbor2.CBORTag) or tagged.tag != 0xC0C001:
        raise ValueError("evidence is not an AS token (CBOR tag 0xC0C001)")
    token_bytes, claims_buffer = tagged.value
    runtime = bound_runtime(claims_buffer, spki)
    return verify_token(token_bytes.decode(), runtime, policies, pinned=pinned), len(der)


def verify_token(token, runtime, policies, pinned=None):
    """rats-cert coco/verifier.rs @34a0ed47: RS384 with the jwk (header, else claims), exp/nbf, runtime, policies.
    With `pinned` (the AS's own public key, as trusted_certs_paths gives it) the token's jwk must be that key."""
    parts = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(parts[0] + "=="))
    claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=="))
    if header.get("alg") != "RS384":
        raise ValueError("token alg %s is not RS384" % header.get("alg"))
    key = jwk.JWK(**(header.get("jwk") or claims["jwk"]))
    if pinned is not None:
        if key.thumbprint() != pinned.thumbprint():
            raise ValueError("the token is not signed by the pinned Attestation Service key")
        key = pinned
    signed = jws.JWS()
    signed.deserialize(token)
    signed.verify(key, alg="RS384")
    now = time.time()
    if claims["exp"] < now:
        raise ValueError("token expired")
    if claims.get("nbf", 0) > now + 5:
        raise ValueError("token not yet valid")
    if json.dumps(claims["customized_claims"]["runtime_data"], separators=(",", ":")) != json.dumps(runtime, separators=(",", ":")):
        raise ValueError("token runtime data differs")
    reported = {r["policy-id"] for r in claims["evaluation-reports"]}
    for policy in policies:
        if policy not in reported:
            raise ValueError("policy %s missing from the token" % policy)
    return claims


class HeldFinishedTLS:
    """TLS over memory BIOs, so that the client's Finished can wait (TNG <= 2.2.4 verifies before sending it)."""

    def __init__(self, sock, context):
        self.sock, self.incoming, self.outgoing = sock, ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="tng.internal")

    def handshake_without_finished(self):
        """Runs the handshake up to, not including, sending the client's Finished."""
        while True:
            try:
                self.tls.do_handshake()
                return
            except ssl.SSLWantReadError:
                self.flush()
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed the connection during the handshake")
                self.incoming.write(data)

    def flush(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def sendall(self, data):
        self.tls.write(data)
        self.flush()

    def recv(self, size):
        while True:
            try:
                return self.tls.read(size)
            except ssl.SSLWantReadError:
                self.flush()
                data = self.sock.recv(65536)
                if not data:
                    return b""
                self.incoming.write(data)
            except ssl.SSLZeroReturnError:
                return b""

    def settimeout(self, value):
        self.sock.settimeout(value)

    def version(self):
        return self.tls.version()

    def selected_alpn_protocol(self):
        return self.tls.selected_alpn_protocol()

    def getpeercert(self, binary_form=False):
        return self.tls.getpeercert(binary_form=binary_form)


def hold(tls, seconds):
    """Sends nothing and reports when the server closed the connection (None: it stayed open)."""
    start = time.time()
    tls.settimeout(seconds)
    try:
        while time.time() - start < seconds:
            if tls.recv(65536) == b"":
                return round(time.time() - start, 2)
    except socket.timeout:
        return None
    except (OSError, ssl.SSLError):
        return round(time.time() - start, 2)
    return None


def tunnel(sock, count, method, request_bytes):
    """One h2 connection, `count` CONNECT streams at once, each carrying `request_bytes`; returns each response."""
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    streams = {}
    start = time.time()
    for _ in range(count):
        stream_id = conn.get_next_available_stream_id()
        headers = [(":method", method), (":authority", "tng.internal")]
        if method != "CONNECT":
            headers += [(":scheme", "https"), (":path", "/")]
        conn.send_headers(stream_id, headers, end_stream=(method != "CONNECT"))
        streams[stream_id] = {"status": None, "body": b"", "ended": False}
    sock.sendall(conn.data_to_send())
    pending_request = set(streams) if method == "CONNECT" else set()
    deadline = time.time() + 30
    while not all(s["ended"] for s in streams.values()) and time.time() < deadline:
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                streams[event.stream_id]["status"] = dict(event.headers)[":status"]
                if request_bytes and event.stream_id in pending_request and streams[event.stream_id]["status"] == "200":
                    conn.send_data(event.stream_id, request_bytes, end_stream=False)
                    pending_request.discard(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                streams[event.stream_id]["body"] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                streams[event.stream_id]["ended"] = True
                if isinstance(event, h2.events.StreamReset):
                    streams[event.stream_id]["reset_code"] = int(event.error_code)
                    streams[event.stream_id]["reset_after"] = round(time.time() - start, 2)
        sock.sendall(conn.data_to_send())
    return [{"status": s["status"], "body": s["body"].decode(errors="replace"), "ended": s["ended"],
             "reset_code": s.get("reset_code"), "reset_after": s.get("reset_after")} for s in streams.values()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--as-addr")
    parser.add_argument("--policy", action="append", default=[])
    parser.add_argument("--path", default="/")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--method", default="CONNECT")
    parser.add_argument("--tls12", action="store_true")
    parser.add_argument("--no-alpn", action="store_true")
    parser.add_argument("--stall", type=float)
    parser.add_argument("--silent", action="store_true", help="with --stall: send nothing at all")
    parser.add_argument("--skip-verify", action="store_true")
    parser.add_argument("--verify-in-handshake", action="store_true")
    parser.add_argument("--passport", action="store_true")
    parser.add_argument("--as-public-key", metavar="JWK_FILE")
    parser.add_argument("--hold", type=float)
    parser.add_argument("--source", help="the local address to connect from")
    parser.add_argument("--no-request", action="store_true", help="open the CONNECT streams and send nothing on them")
    args = parser.parse_args()
    policies = args.policy or ["default"]
    report = {}
    sock = socket.create_connection((args.host, args.port), timeout=30, source_address=(args.source, 0) if args.source else None)
    if args.stall:
        # Start a TLS handshake and stop in the middle of the ClientHello record. A reset counts as closed.
        start = time.time()
        try:
            if not args.silent:
                sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            sock.settimeout(args.stall)
            closed = sock.recv(1) == b""
        except socket.timeout:
            closed = False
        except OSError:
            closed = True
        report = {"closed_by_server": closed, "after": round(time.time() - start, 2)}
        print(json.dumps(report))
        return 0
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the RA certificate is checked below, as TNG's verifier does
    if args.tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    if not args.no_alpn:
        context.set_alpn_protocols(["h2"])
    def check(der):
        if args.passport:
            with open(args.as_public_key) as f:
                pinned = jwk.JWK.from_json(f.read())
            claims, size = verify_passport_certificate(der, pinned, policies)
            report.update(certificate_bytes=size, tee=claims["tee"], token_tee=claims["tee"], model="passport")
            return
        raw, runtime, size = verify_certificate(der)
        report.update(certificate_bytes=size, tee=raw["tee_type"])
        claims = verify_token(ask_as(args.as_addr, raw, runtime, policies), runtime, policies)
        report["token_tee"] = claims["tee"]

    start = time.time()
    try:
        if args.verify_in_handshake:
            tls = HeldFinishedTLS(sock, context)
            tls.handshake_without_finished()
            if tls.selected_alpn_protocol() == "h2" and not args.skip_verify:
                try:
                    check(tls.getpeercert(binary_form=True))
                except Exception as error:  # TNG aborts the handshake: the Finished is never sent
                    report["error"] = "%s: %s" % (type(error).__name__, error)
                    if isinstance(error, ASRefused):
                        report["as_error"] = "%s %s" % (error.status, error.body)
                    print(json.dumps(report))
                    return 1
            tls.flush()  # the Finished, only now
            report["verified_in_handshake"] = not args.skip_verify
        else:
            tls = context.wrap_socket(sock, server_hostname="tng.internal")
    except (ssl.SSLError, OSError) as error:
        print(json.dumps({"handshake": "failed", "error": str(error)}))
        return 1
    report["handshake_seconds"] = round(time.time() - start, 2)
    report["tls_version"] = tls.version()
    report["alpn"] = tls.selected_alpn_protocol()
    try:
        if tls.selected_alpn_protocol() != "h2":
            # A TNG client would give up here; see whether the server talks at all.
            tls.settimeout(3)
            report["server_closed"] = tls.recv(1) == b""
            print(json.dumps(report))
            return 1
        if not args.skip_verify and not args.verify_in_handshake:
            check(tls.getpeercert(binary_form=True))
        report["verified_after_seconds"] = round(time.time() - start, 2)
        request = ("GET %s HTTP/1.1\r\nHost: service\r\nConnection: close\r\n\r\n" % args.path).encode()
        report["streams"] = tunnel(tls, args.streams, args.method, b"" if args.no_request else request)
        if args.hold:
            report["closed_by_server_after"] = hold(tls, args.hold)
    except Exception as error:  # report, do not crash: the test reads the reason
        report["error"] = "%s: %s" % (type(error).__name__, error)
        if isinstance(error, ASRefused):
            report["as_error"] = "%s %s" % (error.status, error.body)
        print(json.dumps(report))
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
