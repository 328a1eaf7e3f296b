#!/usr/bin/env python3
"""A Trustee-compatible KBS on loopback for caid's tests, written from the Trustee sources.

Measured model (issue #20), for `tdx` evidence, in both the KBS /attest and the AS /as/attestation paths
(trustee_eventlog.py holds the verifier, with its citations):
  - The event logs are replayed as the profile's Trustee does: `tcg2` (openanolis >= v1.6.2, confidential-containers
    trustee): `cc_eventlog` parsed as TCG2 (spec-ID event, then TCG_PCR_EVENT2 records) and replayed from zeros
    with SHA-384, CC-MR 1..4 against RTMR0..3 (deps/eventlog/src/lib.rs, deps/verifier/src/tdx/mod.rs); `text`
    (openanolis v1.5.2 / v1.6.0): `cc_eventlog` against RTMR0..2 only, `aa_eventlog` (INIT line, then exactly 3
    space-separated fields per line) against RTMR3 from the INIT value (deps/verifier/src/eventlog/mod.rs). A failed
    replay is an attestation failure, answered as the profile answers those and logged with the reason.
    --eventlog tcg2|text overrides the profile (default: from --profile; without it legacy -> text, current -> tcg2).
  - Claims as that Trustee builds them (`uefi_event_logs` AAEL entries, or `aael` plus `AA.eventlog.<d>.<o>`), put
    where the Simple token puts verifier claims: attestation-service/src/token/simple.rs (openanolis v1.5.2-v1.9.0)
    flattens them under "tdx." (nested objects joined with ".", arrays kept whole) and stores the result as a JSON
    *string* in "tcb-status" (`serde_json::to_string(&flattened_claims)`), in the KBS token (the KBS returns the AS
    token: kbs/src/attestation/coco/builtin.rs) and in the AS token alike.
  - --model-policy ID=DIGEST[,DIGEST...]: policy ID passes only when the last `caid load-model` event's
    content.digest (or, with none, the last `trustiflux.alibaba.com pai/load-model` event's content.hash) is one of
    the DIGESTs; no such event fails. The AS knows ID; the KBS evaluates "default" at /attest, as its built-in AS
    does (builtin.rs: `policy_ids = vec!["default"]`). A failure is simple.rs `Reject by policy {id}`: HTTP 500 from
    the restful AS (attestation-service/src/bin/restful/mod.rs maps the evaluate error to InternalError: a Debug text
    body in <= v1.6.0, {"type","detail"} JSON in v1.6.2-v1.8.x, problem+json in v1.9.0), an attestation failure at
    the KBS. --resource-model DIGEST (repeatable): resources are denied (the profile's PolicyDeny) unless the
    session's claims pass the same check. Every check is logged: {"model_policy", "digest", "passed", "seen"}.

Dialects (the version gate, bodies, bindings, JWE layouts and status codes of each):
  legacy  openanolis/trustee <= 1.5.2 and helm chart 1.0.0 (kbs/src/http/*.rs@9def33a, kbs/src/jwe.rs@v1.5.2):
          version <=0.1.0, extra-params a string, {"tee-pubkey","tee-evidence": "<string>"}, sorted-compact JSON
          SHA-384 binding, RSA1_5 only, JWE with a raw JSON protected header and the tag appended, no AAD.
  current upstream trustee >= 0.14 / openanolis >= 1.6 (kbs/src/attestation/backend.rs, kbs/src/jwe/mod.rs):
          version =0.4.0, runtime-data in the attestation, composite evidence, JCS binding including
          additional-evidence, RFC 7516 JWE (RSA1_5, RSA-OAEP-256, ECDH-ES+A256KW).

Server profiles (--profile) reproduce what one released Trustee does, read from its source (cited per entry in
PROFILES below): which GPU evidence forms it verifies and how (arch spelling, report encoding, nonce), which
status codes and error types it answers, and its session cookie. Without --profile, --dialect picks the older
behaviour of openanolis helm chart 1.0.0 (legacy) or a generic 0.4.0 server (current).

Other libraries than caid's on purpose: Python's json for canonical forms, `cryptography` for the legacy and
Trustee-layout JWEs, `jwcrypto` for RFC 7516 JWEs and the RS384 "Simple" token.

Evidence checked: `sample` ({"svn","report_data"}) byte for byte; `tdx` by the REPORTDATA field of the quote
(offset 568 of a v4 quote, 64 bytes, the binding zero-padded), the fake quotes of tests/fake TSM carry it there;
NVIDIA GPU evidence (legacy gpu_evidence or 0.4.0 additional evidence) by the nonce the fake NVML copies into the
report's first 32 bytes.

Faults and behaviour come from a JSON file read on each request (counts are budgets):
  unavailable      answer 503 to this many requests
  deny             answer 403 PolicyDeny to resource requests
  garbage          answer 200 with a non-JSON body to this many resource requests
  huge             answer 200 with a 2 MiB body to this many resource requests
  expire_sessions  this many KBS requests first expire every session made so far (what time does to Trustee's
                   in-memory sessions: the next use answers 401 ExpiredCookie), so tests need not wait for it
Requests are logged as JSON lines to --log for assertions.
"""
import argparse, base64, datetime, hashlib, json, os, secrets, sys, threading, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes, keywrap
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwcrypto import jwe, jwk, jwt
from peerutil import announce_port
import trustee_eventlog

args = None
lock = threading.Lock()
sessions = {}  # (replica, session id) -> dict
fault_used = {}
replica_counter = [0]
signer = jwk.JWK.generate(kty="RSA", size=2048)
profile = None

OA_ERRORS = {"attest": 500, "version": 500, "deny": 403, "missing": 500}
# Every profile: the KBS error body {"type": ".../errors/<Variant>", "detail"} of kbs/src/error.rs, the 5-minute
# kbs-session-id cookie with only Expires (kbs/src/attestation/session.rs, config.rs DEFAULT_TIMEOUT).
PROFILES = {
    # `eventlog`: how its TDX verifier checks event logs (module docstring).
    # openanolis/trustee v1.5.2: protocol =0.1.0 (kbs/src/attestation/backend.rs); GPUs only as gpu_evidence in the
    # TDX evidence (deps/verifier/src/tdx/gpu/mod.rs), nonce not compared; AttestationError 500, PolicyDeny 403,
    # a missing resource PluginInternalError 500 (kbs/src/error.rs).
    "openanolis-1.5.2": {"dialect": "legacy", "nvidia": None, "embedded": True, "status": OA_ERRORS, "eventlog": "text"},
    # openanolis/trustee v1.6.0-v1.8.x: protocol =0.4.0; `Tee::Nvidia => todo!()` in deps/verifier/src/lib.rs panics
    # inside the actix handler for any "nvidia" additional evidence, even an empty list: the connection closes
    # with no response (actix-web #3126). gpu_evidence as in 1.5.2.
    # v1.6.0 still has the text aa_eventlog (deps/verifier/src/tdx/mod.rs); v1.6.2 (2025-10-13) and later verify the
    # TCG2 cc_eventlog against RTMR0..3 and have no aa_eventlog field.
    "openanolis-1.6.0": {"dialect": "current", "nvidia": "panic", "embedded": True, "status": OA_ERRORS, "eventlog": "text"},
    "openanolis-1.6": {"dialect": "current", "nvidia": "panic", "embedded": True, "status": OA_ERRORS, "eventlog": "tcg2"},
    # openanolis/trustee v1.9.0: `bail!("TEE `nvidia` verifier is not implemented.")`; RcarAuthFailed and
    # RcarAttestFailed answer 502 (kbs/src/error.rs), the Attest detail without its cause.
    "openanolis-1.9": {"dialect": "current", "nvidia": "not-implemented", "embedded": True, "eventlog": "tcg2",
                       "status": {"attest": 502, "version": 502, "deny": 403, "missing": 500}},
    # confidential-containers/trustee v0.15.0: the nvidia verifier (deps/verifier/src/nvidia/mod.rs) takes arch
    # "Hopper" only (nvml-wrapper's DeviceArchitecture, case-sensitive) and a hex report (hex::decode), checks the
    # report nonce against SHA-384(JCS {"nonce","tee-pubkey"})[:32]; the TDX verifier ignores gpu_evidence; every
    # error but PluginNotFound/InvalidRequestPath is 401.
    "upstream-0.15": {"dialect": "current", "eventlog": "tcg2", "nvidia": {"arch": ["Hopper"], "encodings": ["hex"]}, "embedded": False,
                      "status": {"attest": 401, "version": 401, "deny": 401, "missing": 401}},
    # v0.16.0: hex, then base64; still "Hopper" only.
    "upstream-0.16": {"dialect": "current", "eventlog": "tcg2", "nvidia": {"arch": ["Hopper"], "encodings": ["hex", "base64"]}, "embedded": False,
                      "status": {"attest": 401, "version": 401, "deny": 401, "missing": 401}},
    # v0.17.0: its own Architecture enum with serde aliases HOPPER / BLACKWELL.
    "upstream-0.17": {"dialect": "current", "eventlog": "tcg2", "nvidia": {"arch": ["Hopper", "HOPPER"], "encodings": ["hex", "base64"]}, "embedded": False,
                      "status": {"attest": 401, "version": 401, "deny": 401, "missing": 401}},
}


class DropConnection(Exception):
    """What a panicking actix handler does: no response, the connection closed."""


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def canonical(value):
    """serde_json to_vec of a sorted map == JCS for ASCII content: compact, sorted keys, '/' not escaped."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def faults():
    try:
        with open(args.faults) as f:
            return json.load(f)
    except (OSError, ValueError, TypeError):
        return {}


def take_fault(name):
    with lock:
        budget = faults().get(name, 0)
        if fault_used.get(name, 0) < budget:
            fault_used[name] = fault_used.get(name, 0) + 1
            return True
    return False


def log(entry):
    if args.log:
        with lock, open(args.log, "a") as f:
            f.write(json.dumps(entry) + "\n")


def key_subset(pubkey):
    """The JWK members the KBS keeps (TeePubKey), in the shape it hashes."""
    if pubkey.get("kty") == "RSA":
        return {k: pubkey[k] for k in ("alg", "e", "kty", "n")}
    if pubkey.get("kty") == "EC":
        return {k: pubkey[k] for k in ("alg", "crv", "kty", "x", "y")}
    raise ValueError("unknown key type %r" % pubkey.get("kty"))


def check_report_data(tee, evidence, expected):
    """Raises unless the evidence carries `expected` (48 bytes) as its report data."""
    if tee == "sample":
        got = base64.b64decode(evidence["report_data"])
        if got != expected:
            raise ValueError("sample report_data %s does not match the binding %s" % (got.hex(), expected.hex()))
    elif tee == "tdx":
        quote = base64.b64decode(evidence["quote"])
        if len(quote) < 632:
            raise ValueError("TDX quote of %d bytes is too short" % len(quote))
        if quote[568:632] != expected + bytes(64 - len(expected)):
            raise ValueError("TDX REPORTDATA %s does not match the binding" % quote[568:632].hex())
    else:
        raise ValueError("tee %s is not accepted here" % tee)


def check_gpu(reports, nonce):
    for report in reports:
        if report[:32] != nonce[:32]:
            raise ValueError("GPU report nonce %s does not match %s" % (report[:32].hex(), nonce[:32].hex()))


def embedded_gpu_claims(gpu_evidence, report_data):
    """openanolis deps/verifier/src/tdx/gpu/mod.rs: GpuEvidenceList {evidence_list, collection_time} with every
    GpuEvidence field required but the report and certificate (serde fails the whole TDX evidence otherwise); the
    report base64; a GPU that fails is logged and skipped; claims nvidia_gpu.<index>. The nonce is not compared
    there; whether it follows Trustiflux's rule (the report data's first 32 bytes) is logged for the tests."""
    if gpu_evidence is None:
        return {}, None
    for field in ("evidence_list", "collection_time"):
        if field not in gpu_evidence:
            raise ValueError("Deserialize TDX Evidence failed: missing field `%s`" % field)
    datetime.datetime.fromisoformat(gpu_evidence["collection_time"].replace("Z", "+00:00"))
    claims, nonce_ok = {}, True
    for position, gpu in enumerate(gpu_evidence["evidence_list"]):
        for field in ("index", "uuid", "name", "driver_version", "vbios_version", "cc_enabled"):
            if field not in gpu:
                raise ValueError("Deserialize TDX Evidence failed: missing field `%s`" % field)
        if gpu.get("attestation_report") is None:
            continue
        report = base64.b64decode(gpu["attestation_report"], validate=True)
        nonce_ok = nonce_ok and report[:32] == report_data[:32]
        claims["nvidia_gpu.%d" % position] = {"uuid": gpu["uuid"], "driver_version": gpu["driver_version"]}
    return claims, nonce_ok


def device_gpu_claims(device, nonce):
    """confidential-containers deps/verifier/src/nvidia/mod.rs: {"device_evidence_list": [{arch, uuid, evidence,
    certificate}]} with the profile's arch spellings and report encodings; the certificate base64 of a PEM chain;
    the report's nonce against the expected report data's first 32 bytes."""
    accepted = profile["nvidia"]
    claims = []
    for entry in device["device_evidence_list"]:
        for field in ("arch", "uuid", "evidence", "certificate"):
            if field not in entry:
                raise ValueError("missing field `%s`" % field)
        if entry["arch"] not in accepted["arch"]:
            raise ValueError("unknown variant `%s`, expected one of %s" % (entry["arch"], accepted["arch"]))
        report = None
        try:
            report = bytes.fromhex(entry["evidence"])
        except ValueError:
            if "base64" in accepted["encodings"]:
                report = base64.b64decode(entry["evidence"], validate=True)
        if report is None:
            raise ValueError("Invalid character in hex evidence")
        if b"-----BEGIN CERTIFICATE-----" not in base64.b64decode(entry["certificate"], validate=True):
            raise ValueError("the certificate is not a base64 PEM chain")
        if report[:32] != nonce[:32]:
            raise ValueError("Nvidia report nonce mismatch")
        claims.append({"uuid": entry["uuid"]})
    return claims


def verifier_claims(tee, evidence):
    """The claims of the TEE verifier, after the event-log replay of --eventlog (raises ValueError on failure)."""
    if tee == "sample":
        # deps/verifier/src/sample: {"svn", "report_data", "init_data"}.
        return {"svn": evidence.get("svn"), "report_data": evidence.get("report_data", ""), "init_data": ""}
    quote = base64.b64decode(evidence["quote"])
    if args.eventlog == "text":
        return trustee_eventlog.verify_text(evidence, quote)
    flavour = "upstream" if args.profile and args.profile.startswith("upstream") else "openanolis"
    return trustee_eventlog.verify_tcg2(evidence, quote, flavour)


def model_check(policy, claims, digests):
    """--model-policy / --resource-model: the model the claims say was loaded must be one of `digests`."""
    digest, seen = trustee_eventlog.model_digest(claims)
    passed = digest is not None and digest in digests
    log({"model_policy": policy, "digest": digest, "passed": passed, "seen": seen})
    return passed


def make_token(tee, pubkey, nonce, gpu_claims=None, tcb=None):
    now = int(time.time())
    claims = {
        "iss": "CoCo-Attestation-Service", "iat": now, "nbf": now, "exp": now + args.token_seconds,
        "jti": str(uuid.uuid4()), "jwk": json.loads(signer.export_public()), "tee": tee,
        "evaluation-reports": [{"policy-id": "default", "policy-hash": hashlib.sha384(b"default").hexdigest()}],
        "tcb-status": tcb,
        "customized_claims": {"init_data": None, "runtime_data": {"nonce": nonce, "tee-pubkey": pubkey}},
    }
    claims.update(gpu_claims or {})
    token = jwt.JWT(header={"typ": "JWT", "alg": "RS384"}, claims=claims)
    token.make_signed_token(signer)
    return token.serialize()


def legacy_jwe(pubkey, plaintext):
    """openanolis kbs/src/jwe.rs@v1.5.2: RSA1_5-wrapped AES-256-GCM key, raw JSON header, tag appended, no AAD."""
    public = rsa.RSAPublicNumbers(int.from_bytes(b64u_decode(pubkey["e"]), "big"),
                                  int.from_bytes(b64u_decode(pubkey["n"]), "big")).public_key()
    cek, iv = secrets.token_bytes(32), secrets.token_bytes(12)
    return {
        "protected": json.dumps({"alg": "RSA1_5", "enc": "A256GCM"}, separators=(",", ":")),
        "encrypted_key": b64u(public.encrypt(cek, padding.PKCS1v15())),
        "iv": b64u(iv), "ciphertext": b64u(AESGCM(cek).encrypt(iv, plaintext, None)), "tag": "",
    }


def concat_kdf(z, alg, bits):
    out, counter = b"", 1
    while len(out) * 8 < bits:
        out += hashlib.sha256(counter.to_bytes(4, "big") + z + len(alg).to_bytes(4, "big") + alg.encode()
                              + (0).to_bytes(4, "big") * 2 + bits.to_bytes(4, "big")).digest()
        counter += 1
    return out[: bits // 8]


def trustee_ec_jwe(pubkey, plaintext):
    """trustee kbs/src/jwe/mod.rs: ECDH-ES+A256KW with `epk` inside the base64url protected header (its AAD)."""
    peer = ec.EllipticCurvePublicNumbers(int.from_bytes(b64u_decode(pubkey["x"]), "big"),
                                         int.from_bytes(b64u_decode(pubkey["y"]), "big"), ec.SECP256R1()).public_key()
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    numbers = ephemeral.public_key().public_numbers()
    z = ephemeral.exchange(ec.ECDH(), peer)
    kek = concat_kdf(z, "ECDH-ES+A256KW", 256)
    cek, iv = secrets.token_bytes(32), secrets.token_bytes(12)
    header = {"alg": "ECDH-ES+A256KW", "enc": "A256GCM",
              "epk": {"crv": "P-256", "kty": "EC", "x": b64u(numbers.x.to_bytes(32, "big")), "y": b64u(numbers.y.to_bytes(32, "big"))}}
    protected = b64u(json.dumps(header, separators=(",", ":")).encode())
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode())
    return {"protected": protected, "encrypted_key": b64u(keywrap.aes_key_wrap(kek, cek)), "iv": b64u(iv),
            "ciphertext": b64u(sealed[:-16]), "tag": b64u(sealed[-16:])}


def rfc_jwe(pubkey, plaintext, layout):
    """RFC 7516 flattened JSON. `jwcrypto` layout: whatever jwcrypto writes (ECDH `epk` in the per-recipient
    header). `trustee` layout: ECDH `epk` in the protected header, as Trustee writes it."""
    if pubkey["alg"] == "ECDH-ES+A256KW" and layout == "trustee":
        return trustee_ec_jwe(pubkey, plaintext)
    token = jwe.JWE(plaintext, protected=json.dumps({"alg": pubkey["alg"], "enc": "A256GCM"}),
                    algs=["RSA1_5", "RSA-OAEP-256", "ECDH-ES+A256KW", "A256GCM"])
    token.add_recipient(jwk.JWK(**pubkey))
    return json.loads(token.serialize())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def reply(self, status, body, content_type="application/json", cookies=()):
        data = body if isinstance(body, bytes) else (json.dumps(body) if content_type == "application/json" else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for cookie in cookies:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        self.wfile.write(data)

    def error_info(self, status, variant, detail):
        self.reply(status, {"type": "https://github.com/confidential-containers/kbs/errors/" + variant, "detail": detail})

    def status(self, what, fallback):
        return profile["status"][what] if profile else fallback

    def cookies(self):
        jar = {}
        for part in (self.headers.get("Cookie") or "").split(";"):
            if "=" in part:
                name, value = part.strip().split("=", 1)
                jar[name] = value
        return jar

    def route(self):
        """The sticky load balancer: a replica per client, remembered in the SERVERID cookie."""
        jar = self.cookies()
        if args.replicas > 1:
            if "SERVERID" in jar:
                return jar["SERVERID"], []
            with lock:
                replica_counter[0] += 1
                replica = "r%d" % (replica_counter[0] % args.replicas)
            return replica, ["SERVERID=%s; Path=/" % replica]
        return "r0", []

    def session(self, replica):
        jar = self.cookies()
        if "kbs-session-id" not in jar:
            return None, "MissingCookie", "Missing cookie"
        with lock:
            found = sessions.get((replica, jar["kbs-session-id"]))
        if found is None:
            return None, "InvalidCookie", "Invalid cookie"
        if found["expires"] < time.time():
            return None, "ExpiredCookie", "The cookie is expired"
        return found, None, None

    def attest_failed(self, reason):
        """kbs/src/attestation/error.rs RcarAttestFailed: the detail does not carry the cause; it is logged."""
        log({"attest_failed": reason})
        if profile:
            return self.error_info(profile["status"]["attest"], "AttestationError", "Attestation error: RCAR handshake Attest failed")
        # Legacy maps AttestationFailed to 401; openanolis >= 1.4 to 500. Both are retried by clients.
        return self.error_info(401 if args.dialect == "legacy" else 500, "AttestationFailed", "Attestation failed: %s" % reason)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length)

    def do_POST(self):
        self.handle_request("POST")

    def do_GET(self):
        self.handle_request("GET")

    def handle_request(self, method):
        path = self.path.split("?")[0]
        raw = self.body() if method == "POST" else b""
        replica, lb_cookies = self.route()
        log({"method": method, "path": path, "cookie": self.headers.get("Cookie"), "replica": replica})
        if method == "POST" and path == args.prefix.rstrip("/") + "/as/attestation":
            return self.as_attestation(raw)
        prefix = args.prefix.rstrip("/") + "/kbs/v0/"
        if not path.startswith(prefix):
            return self.reply(404, b"not found", "text/plain")
        if take_fault("unavailable"):
            return self.reply(503, b"upstream unavailable", "text/plain")
        if take_fault("expire_sessions"):
            with lock:
                for found in sessions.values():
                    found["expires"] = min(found["expires"], time.time() - 1)
        endpoint = path[len(prefix):]
        try:
            if method == "POST" and endpoint == "auth":
                return self.auth(raw, replica, lb_cookies)
            if method == "POST" and endpoint == "attest":
                return self.attest(raw, replica, lb_cookies)
            if method == "GET" and endpoint.startswith("resource/"):
                return self.resource(endpoint[len("resource/"):], replica)
        except DropConnection as drop:
            log({"dropped": str(drop)})
            self.close_connection = True
            self.connection.shutdown(2)
            return
        except Exception as error:  # the server must answer, whatever the client sent
            return self.reply(400, ("bad request: %s" % error).encode(), "text/plain")
        return self.reply(404, b"not found", "text/plain")

    def as_attestation(self, raw):
        """The RESTful Attestation Service (openanolis attestation-service/src/bin/restful@9def33a): the flat
        request of <= 1.5.2, or `verification_requests` of >= 1.6 (--as-api). Answers the Simple RS384 token as
        text/plain; errors are plain text with status 500 (a missing field the way serde words it)."""
        if take_fault("as_unavailable"):
            return self.reply(503, b"unavailable", "text/plain")
        if args.as_delay:
            # A slow Attestation Service: TNG clients wait for it inside or right after the TLS handshake.
            time.sleep(args.as_delay)
        body = json.loads(raw)
        if args.as_api == "current":
            if "verification_requests" not in body:
                return self.reply(400, b"Json deserialize error: missing field `verification_requests`", "text/plain")
            request = body["verification_requests"][0]
        else:
            if "tee" not in body:
                return self.reply(400, b"Json deserialize error: missing field `tee`", "text/plain")
            request = body
        policies = body.get("policy_ids") or ["default"]
        unknown = [p for p in policies if p not in args.as_policy]
        if unknown:
            return self.reply(500, ("Policy not found: %s" % unknown).encode(), "text/plain")
        try:
            evidence = json.loads(b64u_decode(request["evidence"]))
            structured = request["runtime_data"]["structured"]
            if request.get("runtime_data_hash_algorithm", "sha384") != "sha384":
                raise ValueError("only sha384 runtime data here")
            check_report_data(request["tee"], evidence, hashlib.sha384(canonical(structured)).digest())
            tee_claims = verifier_claims(request["tee"], evidence)
        except (KeyError, ValueError, TypeError) as error:
            log({"as_failed": str(error)})
            return self.reply(500, ("Evidence verification failed: %s" % error).encode(), "text/plain")
        for policy in policies:  # simple.rs: every requested policy in turn; the first refusal ends it
            if policy in args.model_policy and not model_check(policy, tee_claims, args.model_policy[policy]):
                return self.as_reject(policy)
        log({"as": request["tee"], "policies": policies})
        now = int(time.time())
        claims = {
            "iss": "CoCo-Attestation-Service", "iat": now, "nbf": now, "exp": now + args.as_token_seconds,
            "jti": str(uuid.uuid4()), "jwk": json.loads(signer.export_public()), "tee": request["tee"],
            "evaluation-reports": [{"policy-id": p, "policy-hash": hashlib.sha384(p.encode()).hexdigest()} for p in policies],
            "tcb-status": trustee_eventlog.tcb_status(request["tee"], tee_claims), "reference-data": {},
            "customized_claims": {"init_data": None, "runtime_data": structured},
        }
        token = jwt.JWT(header={"typ": "JWT", "alg": "RS384"}, claims=claims)
        token.make_signed_token(signer)
        self.reply(200, token.serialize().encode(), "text/plain")

    def as_reject(self, policy):
        """simple.rs `bail!("Reject by policy {policy_id}")` through the restful AS's error mapping
        (attestation-service/src/bin/restful/mod.rs): always 500 InternalError; the body by release."""
        reason = "Reject by policy %s" % policy
        if args.profile == "openanolis-1.9":
            # v1.9.0: problem+json; an error that is neither AttestationError nor VerifierError is `internal`.
            body = {"type": "https://github.com/confidential-containers/attestation-service/errors/InternalError",
                    "title": "Internal server error", "status": 500, "code": "AS.INTERNAL.ERROR",
                    "detail": "The attestation service encountered an internal error.", "retryable": False}
            return self.reply(500, json.dumps(body).encode(), "application/problem+json")
        if args.profile in ("openanolis-1.5.2", "openanolis-1.6.0") or (not args.profile and args.as_api == "legacy"):
            # v1.5.2 / v1.6.0: `format!("{self:#?}")` of InternalError(anyhow context "attestation report evaluate").
            text = ('InternalError(\n    Error {\n        context: "attestation report evaluate",\n'
                    '        source: "%s",\n    },\n)' % reason)
            return self.reply(500, text.encode(), "text/plain")
        # v1.6.2-v1.8.x: ErrorInformation {type, detail}, detail "An internal error occured: attestation report evaluate: <e>".
        body = {"type": "https://github.com/confidential-containers/attestation-service/errors/InternalError",
                "detail": "An internal error occured: attestation report evaluate: %s" % reason}
        return self.reply(500, json.dumps(body).encode(), "application/json")

    def auth(self, raw, replica, lb_cookies):
        if self.headers.get("Content-Type") != "application/json":
            return self.reply(400, b"Content type error", "text/plain")
        request = json.loads(raw)
        if profile:
            wanted = "0.1.0" if args.dialect == "legacy" else "0.4.0"
            if args.dialect == "legacy" and not isinstance(request.get("extra-params"), str):
                return self.reply(500, b"Auth failed: deserialize Request: invalid type: map, expected a string", "text/plain")
            if request.get("version") != wanted:
                return self.error_info(profile["status"]["version"], "AttestationError",
                                       "Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: expect =%s while the request is %s"
                                       % (wanted, request.get("version")))
        elif args.dialect == "legacy":
            if not isinstance(request.get("extra-params"), str):
                return self.reply(400, b"Json deserialize error: invalid type: map, expected a string", "text/plain")
            if request.get("version") != "0.1.0":
                return self.error_info(401, "ProtocolVersion",
                                       "KBS Client Protocol Version Mismatch: expected version: <=0.1.0, requested version: %s" % request.get("version"))
        elif request.get("version") != "0.4.0":
            return self.error_info(401, "AttestationFailed",
                                   "Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: expect =0.4.0 while the request is %s" % request.get("version"))
        if request.get("tee") not in ("sample", "tdx"):
            return self.error_info(401, "AttestationFailed", "tee %r not supported" % request.get("tee"))
        session_id = uuid.uuid4().hex
        nonce = base64.b64encode(secrets.token_bytes(32)).decode()
        with lock:
            sessions[(replica, session_id)] = {"nonce": nonce, "tee": request["tee"], "expires": time.time() + args.session_seconds, "attested": None}
        expires = datetime.datetime.fromtimestamp(time.time() + args.session_seconds, datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
        self.reply(200, {"nonce": nonce, "extra-params": ""}, cookies=lb_cookies + ["kbs-session-id=%s; Expires=%s" % (session_id, expires)])

    def attest(self, raw, replica, lb_cookies):
        session, variant, detail = self.session(replica)
        if session is None:
            if profile:
                return self.attest_failed("session: %s" % detail)
            return self.error_info(401, variant, detail)
        attestation = json.loads(raw)
        tee = session["tee"]
        gpu_claims, nonce_ok, gpu_count = {}, None, 0
        try:
            if args.dialect == "legacy":
                pubkey = attestation["tee-pubkey"]
                if pubkey.get("kty") != "RSA" or pubkey.get("alg") != "RSA1_5":
                    raise ValueError("the legacy KBS needs an RSA1_5 key, got %s/%s" % (pubkey.get("kty"), pubkey.get("alg")))
                evidence = json.loads(attestation["tee-evidence"])
                primary = evidence
                binding = hashlib.sha384(canonical({"nonce": session["nonce"], "tee-pubkey": key_subset(pubkey)})).digest()
                check_report_data(tee, evidence, binding)
                if profile:
                    gpu_claims, nonce_ok = embedded_gpu_claims(evidence.get("gpu_evidence"), binding + bytes(16))
                else:
                    gpu = (evidence.get("gpu_evidence") or {}).get("evidence_list") or []
                    check_gpu([base64.b64decode(d["attestation_report"]) for d in gpu], binding + bytes(16))
                    gpu_count = len(gpu)
            else:
                runtime = attestation["runtime-data"]
                if runtime.get("nonce") != session["nonce"]:
                    raise ValueError("runtime-data nonce does not match the session")
                pubkey = runtime["tee-pubkey"]
                composite = attestation["tee-evidence"]
                additional = composite["additional_evidence"]
                binding = hashlib.sha384(canonical({"additional-evidence": additional, "nonce": runtime["nonce"], "tee-pubkey": key_subset(pubkey)})).digest()
                primary = composite["primary_evidence"]
                check_report_data(tee, primary, binding)
                device_nonce = hashlib.sha384(canonical({"nonce": runtime["nonce"], "tee-pubkey": key_subset(pubkey)})).digest()
                devices = json.loads(additional) if additional else {}
                if profile:
                    if "nvidia" in devices:
                        if profile["nvidia"] == "panic":
                            raise DropConnection("Tee::Nvidia => todo!()")
                        if profile["nvidia"] == "not-implemented":
                            raise ValueError("TEE `nvidia` verifier is not implemented.")
                        gpu_claims = {"nvidia": device_gpu_claims(devices["nvidia"], device_nonce)}
                    if profile["embedded"] and tee == "tdx":
                        embedded, nonce_ok = embedded_gpu_claims(composite["primary_evidence"].get("gpu_evidence"), binding + bytes(16))
                        gpu_claims.update(embedded)
                elif devices:
                    listed = devices["nvidia"]["device_evidence_list"]
                    check_gpu([base64.b64decode(d["evidence"]) if not all(c in "0123456789abcdef" for c in d["evidence"]) else bytes.fromhex(d["evidence"]) for d in listed], device_nonce)
                    gpu_count = len(listed)
            tee_claims = verifier_claims(tee, primary)
        except (KeyError, ValueError, TypeError) as error:
            return self.attest_failed(str(error))
        # kbs/src/attestation/coco/builtin.rs: the KBS's own AS evaluates policy "default".
        if "default" in args.model_policy and not model_check("default", tee_claims, args.model_policy["default"]):
            return self.attest_failed("Reject by policy default")
        gpus = len(gpu_claims.get("nvidia", [])) + len([k for k in gpu_claims if k.startswith("nvidia_gpu.")]) if profile else gpu_count
        with lock:
            session["attested"] = key_subset(pubkey)
            session["gpu"] = gpus > 0
            session["claims"] = tee_claims
        log({"attested": tee, "alg": pubkey["alg"], "gpu": gpus > 0, "gpus": gpus, "gpu_claims": gpu_claims, "embedded_nonce_ok": nonce_ok})
        token = make_token(tee, key_subset(pubkey), session["nonce"], gpu_claims, trustee_eventlog.tcb_status(tee, tee_claims))
        self.reply(200, {"token": token}, cookies=lb_cookies)

    def resource(self, path, replica):
        session, variant, detail = self.session(replica)
        if session is None or session["attested"] is None:
            if profile:
                # kbs/src/api_server.rs get_attestation_token: no usable session and no bearer token.
                return self.error_info(401, "TokenNotFound", "Attestation Token not found")
            return self.error_info(401, variant or "UnAuthenticatedCookie", detail or "The session is not attested")
        refused = bool(args.resource_model) and not model_check("resource", session.get("claims") or {}, args.resource_model)
        if refused or take_fault("deny") or faults().get("deny_all"):
            if profile:
                return self.error_info(profile["status"]["deny"], "PolicyDeny", "Access denied by policy")
            return self.error_info(403, "PolicyDeny", "Policy deny: resource policy denied the request")
        if path not in args.resource:
            if profile:
                # plugins/implementations/resource/local_fs.rs: the read error becomes PluginInternalError.
                log({"missing_resource": path})
                return self.error_info(profile["status"]["missing"], "PluginInternalError", "Plugin internal error")
            return self.error_info(404, "ReadSecretFailed", "Read secret failed: resource %s not found" % path)
        if take_fault("garbage"):
            return self.reply(200, b"<html>not json</html>", "text/html")
        if take_fault("huge"):
            return self.reply(200, b"{" + b" " * (2 << 20) + b"}")
        with open(args.resource[path], "rb") as f:
            plaintext = f.read()
        pubkey = session["attested"]
        if args.dialect == "legacy":
            body = legacy_jwe(pubkey, plaintext)
        else:
            body = rfc_jwe(pubkey, plaintext, args.jwe_layout)
        self.reply(200, body)


def main():
    global args
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dialect", choices=["legacy", "current"])
    parser.add_argument("--profile", choices=sorted(PROFILES), help="behave as this released Trustee (sets the dialect)")
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate chain (PEM)")
    parser.add_argument("--tls-key")
    parser.add_argument("--encrypt-for", metavar="JWK_FILE",
                        help="instead of serving: print a JWE of --plaintext for this public JWK in --jwe-layout (or legacy)")
    parser.add_argument("--plaintext")
    parser.add_argument("--resource", action="append", default=[], help="repo/type/tag=FILE")
    parser.add_argument("--prefix", default="/", help="path prefix before kbs/v0 (TRUSTEE_URL's path)")
    parser.add_argument("--replicas", type=int, default=1, help="replicas behind a sticky load balancer")
    parser.add_argument("--session-seconds", type=float, default=300)
    parser.add_argument("--token-seconds", type=int, default=300)
    parser.add_argument("--jwe-layout", choices=["trustee", "jwcrypto", "legacy"], default="trustee")
    parser.add_argument("--as-api", choices=["legacy", "current"], default="legacy",
                        help="the Attestation Service's request form: flat (<= 1.5.2) or verification_requests (>= 1.6)")
    parser.add_argument("--as-policy", action="append", default=["default"], help="policy ids the AS knows")
    parser.add_argument("--as-token-seconds", type=int, default=300)
    parser.add_argument("--eventlog", choices=["tcg2", "text"],
                        help="how TDX event logs are verified (default: the profile's; legacy -> text, current -> tcg2)")
    parser.add_argument("--model-policy", action="append", default=[], metavar="ID=DIGEST[,DIGEST...]",
                        help="policy ID passes only for these model digests (the AS knows ID; the KBS evaluates default)")
    parser.add_argument("--resource-model", action="append", default=[], metavar="DIGEST",
                        help="resources only for sessions whose claims show one of these model digests")
    # Attestation Service only: a delay before each /as/attestation answer, and where to write the public JWK
    # that signs its tokens (what a TNG passport client pins with trusted_certs_paths).
    parser.add_argument("--as-delay", type=float, default=0)
    parser.add_argument("--as-public-key", metavar="JWK_FILE")
    parser.add_argument("--faults")
    parser.add_argument("--log")
    parser.add_argument("--port-file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (written to --port-file)")
    args = parser.parse_args()
    if args.encrypt_for:
        with open(args.encrypt_for) as f:
            pubkey = json.load(f)
        with open(args.plaintext, "rb") as f:
            plaintext = f.read()
        body = legacy_jwe(pubkey, plaintext) if args.jwe_layout == "legacy" else rfc_jwe(pubkey, plaintext, args.jwe_layout)
        print(json.dumps(body))
        return
    if not args.port_file:
        parser.error("--port-file is required to serve")
    global profile
    if args.profile:
        profile = PROFILES[args.profile]
        args.dialect = profile["dialect"]
        if args.dialect == "legacy":
            args.jwe_layout = "legacy"
    args.dialect = args.dialect or "current"
    if not args.eventlog:
        args.eventlog = profile["eventlog"] if profile else ("text" if args.dialect == "legacy" else "tcg2")
    policies = {}
    for item in args.model_policy:
        name, _, digests = item.partition("=")
        if not name or not digests:
            parser.error("--model-policy takes ID=DIGEST[,DIGEST...], got %r" % item)
        policies[name] = set(digests.split(","))
        if name not in args.as_policy:
            args.as_policy.append(name)
    args.model_policy = policies
    args.resource_model = set(args.resource_model)
    args.resource = dict(item.split("=", 1) for item in args.resource)
    if args.as_public_key:
        with open(args.as_public_key, "w") as f:
            f.write(signer.export_public())
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    if args.tls_cert:
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    announce_port(args.port_file, server.server_address[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
