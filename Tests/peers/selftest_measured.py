#!/usr/bin/env python3
"""Self-test of the measured-model peers (issue #20): fake_tsm.py's RTMR files and trustee_server.py's event-log
replay, claims and model policies, driven the way caid will drive them, with evidence built here independently of
trustee_eventlog.py (own TCG2 writer, own text AAEL writer). Needs FUSE (run as root). Not run by `swift test`;
run it by hand after changing those peers: `python3 Tests/peers/selftest_measured.py` (exit 0 = all held)."""
import base64, hashlib, json, os, struct, subprocess, sys, tempfile, time, urllib.error, urllib.request

from cryptography.hazmat.primitives.asymmetric import rsa

HERE = os.path.dirname(os.path.abspath(__file__))
failures = []


def expect(condition, what):
    print(("ok   " if condition else "FAIL ") + what)
    if not condition:
        failures.append(what)


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


# --- evidence writers (from the facts note §2, not from the peers' code) ---
# CoCo EL_HEADER: SHA1-format EV_NO_ACTION, data 0x25 bytes: 24 zero bytes, 2 algs {SHA-384, 48} {SM3, 32}, vendor 0.
EL_HEADER = (struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", 0x25) + bytes(24)
             + struct.pack("<I", 2) + struct.pack("<HH", 0x0C, 48) + struct.pack("<HH", 0x12, 32) + b"\0")
assert len(EL_HEADER) == 69


def tagged(text):
    data = text.encode()
    return struct.pack("<II", 0x4141454C, len(data)) + data


def aael_record(text):
    event = tagged(text)
    digest = hashlib.sha384(event).digest()
    return struct.pack("<III", 4, 6, 1) + struct.pack("<H", 0x0C) + digest + struct.pack("<I", len(event)) + event, digest


def ccel(events):
    """A firmware-like CCEL: a real spec-ID event ("Spec ID Event03", SHA-384 only), then EV_EFI_ACTION events."""
    spec = b"Spec ID Event03\0" + struct.pack("<IBBBB", 0, 0, 2, 0, 2) + struct.pack("<I", 1) + struct.pack("<HH", 0x0C, 48) + b"\0"
    log = struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(spec)) + spec
    for index, text in events:
        data = text.encode()
        log += struct.pack("<III", index, 0x80000007, 1) + struct.pack("<H", 0x0C) + hashlib.sha384(data).digest() + struct.pack("<I", len(data)) + data
    return log + b"\xff" * 4096  # the table's padding


def trim(table):
    # what caid sends: the events up to the terminator, then 8 x 0xFF (fixed layout here: SHA-384 only)
    offset = 8 + 20
    offset += 4 + struct.unpack_from("<I", table, offset)[0]
    while table[offset:offset + 8] not in (b"\xff" * 8, bytes(8)):
        offset += 12 + 2 + 48
        offset += 4 + struct.unpack_from("<I", table, offset)[0]
    return table[:offset]


class TSM:
    def __init__(self, root, *options):
        self.mount = os.path.join(root, "tsm-%d" % len(os.listdir(root)))
        os.mkdir(self.mount)
        self.stats = self.mount + ".stats"
        self.process = subprocess.Popen([sys.executable, os.path.join(HERE, "fake_tsm.py"), self.mount, "--stats", self.stats, *options])
        for _ in range(100):
            if os.path.isdir(self.mount + "/measurements"):
                return
            time.sleep(0.05)
        raise RuntimeError("fake_tsm did not mount")

    def rtmr(self, number):
        with open("%s/measurements/rtmr%d:sha384" % (self.mount, number), "rb") as f:
            return f.read()

    def extend(self, digest):
        fd = os.open(self.mount + "/measurements/rtmr3:sha384", os.O_WRONLY)
        try:
            assert os.write(fd, digest) == 48
        finally:
            os.close(fd)

    def quote(self, report_data):
        entry = self.mount + "/report/e%d" % time.monotonic_ns()
        os.mkdir(entry)
        with open(entry + "/inblob", "wb") as f:
            f.write(report_data.ljust(64, b"\0"))
        with open(entry + "/outblob", "rb") as f:
            quote = f.read()
        os.rmdir(entry)
        return quote

    def stop(self):
        subprocess.run(["fusermount", "-u", self.mount], check=False)
        self.process.wait(timeout=10)


class Caid:
    """The agent: extends RTMR3 through sysfs and keeps both event logs."""

    def __init__(self, tsm, text=False):
        self.tsm, self.records, self.lines = tsm, b"", []
        if text:  # legacy: INIT with RTMR3 as found, extended first
            self.lines.append("INIT sha384/%s" % tsm.rtmr(3).hex())
            tsm.extend(hashlib.sha384(self.lines[0].encode()).digest())

    def event(self, text, text_log=False):
        if text_log:
            self.lines.append(text)
            self.tsm.extend(hashlib.sha384(text.encode()).digest())
        else:
            record, digest = aael_record(text)
            self.records += record
            self.tsm.extend(digest)

    def evidence(self, binding, table=None):
        log = (trim(table) if table else EL_HEADER) + self.records + b"\xff" * 8
        evidence = {"quote": base64.b64encode(self.tsm.quote(binding)).decode(), "cc_eventlog": base64.b64encode(log).decode()}
        if self.lines:
            evidence["aa_eventlog"] = "".join(line + "\n" for line in self.lines)
            evidence["cc_eventlog"] = base64.b64encode(trim(table) + b"\xff" * 8).decode() if table else None
        return evidence


class Server:
    def __init__(self, root, *options):
        self.dir = tempfile.mkdtemp(dir=root)
        with open(self.dir + "/key", "w") as f:
            f.write("secret")
        self.log = self.dir + "/log"
        self.process = subprocess.Popen([sys.executable, os.path.join(HERE, "trustee_server.py"), "--port-file", self.dir + "/port",
                                         "--log", self.log, "--resource", "default/k/m=" + self.dir + "/key", *options])
        for _ in range(100):
            if os.path.exists(self.dir + "/port"):
                break
            time.sleep(0.05)
        self.url = "http://127.0.0.1:%s" % open(self.dir + "/port").read()
        self.cookie = None

    def post(self, path, body):
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **({"Cookie": self.cookie} if self.cookie else {})})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.headers.get("Set-Cookie"):
                    self.cookie = response.headers["Set-Cookie"].split(";")[0]
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def get(self, path):
        request = urllib.request.Request(self.url + path, headers={"Cookie": self.cookie} if self.cookie else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def entries(self, key):
        with open(self.log) as f:
            return [e for e in map(json.loads, f) if key in e]

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers()
PUBKEY = {"alg": "RSA1_5", "e": b64u(KEY.e.to_bytes(3, "big")), "kty": "RSA", "n": b64u(KEY.n.to_bytes(256, "big"))}


def kbs_attest(server, agent, legacy=False, table=None):
    status, body = server.post("/kbs/v0/auth", {"version": "0.1.0" if legacy else "0.4.0", "tee": "tdx", "extra-params": "" if legacy else {}})
    nonce = json.loads(body)["nonce"]
    if legacy:
        binding = hashlib.sha384(canonical({"nonce": nonce, "tee-pubkey": PUBKEY})).digest()
        return server.post("/kbs/v0/attest", {"tee-pubkey": PUBKEY, "tee-evidence": json.dumps(agent.evidence(binding, table))})
    binding = hashlib.sha384(canonical({"additional-evidence": "", "nonce": nonce, "tee-pubkey": PUBKEY})).digest()
    return server.post("/kbs/v0/attest", {"runtime-data": {"nonce": nonce, "tee-pubkey": PUBKEY},
                                          "tee-evidence": {"primary_evidence": agent.evidence(binding, table), "additional_evidence": ""}})


def as_attest(server, agent, policies, table=None):
    runtime = {"nonce": "n1", "pubkey": "k"}
    evidence = agent.evidence(hashlib.sha384(canonical(runtime)).digest(), table)
    return server.post("/as/attestation", {"verification_requests": [{"tee": "tdx", "evidence": b64u(json.dumps(evidence).encode()), "runtime_data": {"structured": runtime},
                                                                       "runtime_data_hash_algorithm": "sha384"}], "policy_ids": policies})


def token_claims(token):
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def main():
    root = tempfile.mkdtemp(prefix="selftest-measured-")
    good, bad = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    caid_event = 'caid load-model {"digest":"%s"}' % good
    pai_event = 'trustiflux.alibaba.com pai/load-model {"hash":"%s","model-id":"qwen"}' % bad
    tsms, servers = [], []
    try:
        # 1. TCG2 (openanolis >= 1.6.2), RTMR3 extended through sysfs, no CCEL.
        tsm = TSM(root); tsms.append(tsm)
        agent = Caid(tsm)
        agent.event(pai_event)
        agent.event(caid_event)
        expect(json.load(open(tsm.stats))["extends"]["3"] == 2, "fake_tsm counts 2 RTMR3 extends")
        server = Server(root, "--profile", "openanolis-1.6", "--as-api", "current", "--model-policy", "model=%s" % good,
                        "--model-policy", "other=%s" % bad, "--resource-model", good); servers.append(server)
        status, body = kbs_attest(server, agent)
        expect(status == 200, "tcg2: KBS attests a logged RTMR3 (%s %s)" % (status, body[:200]))
        if status == 200:
            claims = token_claims(json.loads(body)["token"])
            expect(isinstance(claims["tcb-status"], str), "tcb-status is a JSON string")
            tcb = json.loads(claims["tcb-status"])
            logs = tcb.get("tdx.uefi_event_logs") or []
            aael = [e for e in logs if e["details"].get("unicode_name") == "AAEL"]
            expect(len(aael) == 2 and aael[1]["details"]["data"] == {"domain": "caid", "operation": "load-model", "content": {"digest": good}},
                   "KBS token: tdx.uefi_event_logs carries the AAEL entries, content parsed as JSON")
            expect(aael and aael[1]["index"] == 4 and aael[1]["type_name"] == "EV_EVENT_TAG" and aael[1]["digests"][0]["alg"] == "SHA-384"
                   and "digest_matches_event" not in aael[1], "AAEL entry: index 4, EV_EVENT_TAG, SHA-384, no digest_matches_event (openanolis)")
            expect(tcb.get("tdx.quote.body.rtmr_3") == tsm.rtmr(3).hex(), "tcb-status has tdx.quote.body.rtmr_3")
        status, body = server.get("/kbs/v0/resource/default/k/m")
        expect(status == 200, "resource released for the right model digest (%s)" % status)
        status, body = as_attest(server, agent, ["model"])
        expect(status == 200, "AS: policy model passes (%s %s)" % (status, body[:200]))
        status, body = as_attest(server, agent, ["other"])
        expect(status == 500 and "Reject by policy other" in body, "AS: policy other rejects with 500 (%s %s)" % (status, body[:200]))
        checks = server.entries("model_policy")
        expect(checks[-1] == {"model_policy": "other", "digest": good, "passed": False, "seen": "caid load-model"}, "policy check logged: %s" % checks[-1])
        # tng_client reports the refusal as as_error
        sys.path.insert(0, HERE)
        import tng_client
        runtime = {"nonce": "n1", "pubkey": "k"}
        raw = {"tee_type": "tdx", "aa_evidence": json.dumps(agent.evidence(hashlib.sha384(canonical(runtime)).digest())).encode()}
        try:
            tng_client.ask_as(server.url + "/as", raw, runtime, ["other"])
            expect(False, "tng_client.ask_as raises on a refusal")
        except tng_client.ASRefused as error:
            expect(error.status == 500 and "Reject by policy other" in error.body, "tng_client: ASRefused(500, Reject by policy other)")

        # the KBS's built-in AS evaluates policy "default" at /attest
        kbs_default = Server(root, "--profile", "openanolis-1.6", "--model-policy", "default=" + bad); servers.append(kbs_default)
        status, _ = kbs_attest(kbs_default, agent)
        expect(status == 500 and kbs_default.entries("attest_failed")[-1]["attest_failed"] == "Reject by policy default",
               "KBS: --model-policy default refuses /attest for another model")

        # 2. An RTMR3 extend that is not in the log fails the evidence (KBS and AS).
        tsm.extend(hashlib.sha384(b"unlogged").digest())
        status, body = kbs_attest(server, agent)
        expect(status == 500 and "RTMR [4]" in server.entries("attest_failed")[-1]["attest_failed"], "tcg2: an unlogged extend fails /attest (%s)" % status)
        status, body = as_attest(server, agent, ["model"])
        expect(status == 500 and "RTMR [4]" in body, "tcg2: an unlogged extend fails the AS (%s)" % body[:120])

        # 3. A real CCEL: without the firmware's extends the replay fails on RTMR0; with --ccel it holds.
        table = ccel([(1, "td_hob"), (2, "kernel"), (3, "initrd")])
        with open(root + "/CCEL", "wb") as f:
            f.write(table)
        plain = TSM(root); tsms.append(plain)
        status, _ = kbs_attest(server, Caid(plain), table=table)
        expect(status == 500 and "RTMR [1]" in server.entries("attest_failed")[-1]["attest_failed"], "tcg2: CCEL without matching RTMR0 fails")
        booted = TSM(root, "--ccel", root + "/CCEL", "--rtmr3-extend", "cd" * 48); tsms.append(booted)
        agent = Caid(booted)
        agent.event(caid_event)
        status, _ = kbs_attest(server, agent, table=table)
        expect(status == 500 and "RTMR [4]" in server.entries("attest_failed")[-1]["attest_failed"], "tcg2: another agent's unlogged extend fails")
        booted2 = TSM(root, "--ccel", root + "/CCEL"); tsms.append(booted2)
        agent = Caid(booted2)
        agent.event(caid_event)
        status, body = kbs_attest(server, agent, table=table)
        expect(status == 200, "tcg2: CCEL + AAEL replay with --ccel (%s)" % server.entries("attest_failed")[-1:])
        # no load-model event at all: the model policy fails, the resource is refused
        fresh = TSM(root); tsms.append(fresh)
        status, body = as_attest(server, Caid(fresh), ["model"])
        expect(status == 500 and "Reject by policy model" in body, "no load-model event fails the policy")

        # the wrong model: resources are refused with the profile's PolicyDeny (403 on openanolis)
        strict = Server(root, "--profile", "openanolis-1.6", "--resource-model", bad); servers.append(strict)
        status, _ = kbs_attest(strict, agent, table=table)
        status, body = strict.get("/kbs/v0/resource/default/k/m")
        expect(status == 403 and "PolicyDeny" in body, "resource refused for another model digest (%s %s)" % (status, body[:100]))
        expect(strict.entries("model_policy")[-1]["digest"] == good, "the refused digest is logged")

        # 4. openanolis "" cc_eventlog fails; upstream skips it.
        up = Server(root, "--profile", "upstream-0.17"); servers.append(up)
        empty = TSM(root); tsms.append(empty)
        class Empty(Caid):
            def evidence(self, binding, table=None):
                return {"quote": base64.b64encode(self.tsm.quote(binding)).decode(), "cc_eventlog": ""}
        status, _ = kbs_attest(up, Empty(empty))
        expect(status == 200, "upstream: empty cc_eventlog is skipped")
        status, _ = kbs_attest(server, Empty(empty))
        expect(status == 500, "openanolis >= 1.6.2: empty cc_eventlog fails")
        agent = Caid(empty)
        agent.event(caid_event)
        status, body = kbs_attest(up, agent)
        expect(status == 200, "upstream: TCG2 attests")
        if status == 200:
            logs = json.loads(token_claims(json.loads(body)["token"])["tcb-status"])["tdx.uefi_event_logs"]
            expect(logs[-1].get("digest_matches_event") is True, "upstream: entries carry digest_matches_event")

        # 5. Text form: openanolis 1.5.2 (legacy KBS) and 1.6.0, RTMR3 not zero at INIT.
        for profile, legacy in (("openanolis-1.5.2", True), ("openanolis-1.6.0", False)):
            text_tsm = TSM(root, "--rtmr3-extend", "ef" * 48, "--ccel", root + "/CCEL"); tsms.append(text_tsm)
            agent = Caid(text_tsm, text=True)
            agent.event('caid load-model {"digest":"%s"}' % good, text_log=True)
            text_server = Server(root, "--profile", profile, "--model-policy", "model=" + good, "--resource-model", good,
                                 *(() if legacy else ("--as-api", "current"))); servers.append(text_server)
            status, body = kbs_attest(text_server, agent, legacy=legacy, table=table)
            expect(status == 200, "%s: text AAEL attests (%s %s)" % (profile, status, text_server.entries("attest_failed")[-1:]))
            if status == 200:
                tcb = json.loads(token_claims(json.loads(body)["token"])["tcb-status"])
                expect(tcb.get("tdx.aael.caid/load-model") == ['{"digest":"%s"}' % good], "%s: tdx.aael.caid/load-model is a list of strings" % profile)
                expect(tcb.get("tdx.AA.eventlog.caid.load-model") == '{"digest":"%s"}' % good, "%s: flat tdx.AA.eventlog.caid.load-model" % profile)
            status, _ = text_server.get("/kbs/v0/resource/default/k/m")
            expect(status == 200, "%s: resource released (%s)" % (profile, status))
            agent.event("caid load-model two words", text_log=True)
            status, _ = kbs_attest(text_server, agent, legacy=legacy, table=table)
            expect(status == 500 and "Illegal AA event entry" in text_server.entries("attest_failed")[-1]["attest_failed"], "%s: content with a space fails" % profile)
        status, body = as_attest(text_server, agent, ["model"], table=table)
        expect(status == 500 and "Illegal AA event entry" in body, "text AS: the bad line fails the evidence")
    finally:
        for server in servers:
            server.stop()
        for tsm in tsms:
            tsm.stop()
    print("%d failure(s)" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
