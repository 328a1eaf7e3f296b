"""What Trustee's TDX verifier does with the event logs in TDX evidence, and the claims it builds from them, for the
test KBS/AS (trustee_server.py). Written from the sources of each released Trustee; cited per function. Two forms:

  tcg2  openanolis/trustee >= v1.6.2 (also v1.7.x-v1.9.0) and confidential-containers/trustee (v0.15.0-v0.21.0):
        `cc_eventlog` = base64 of a TCG2 log (CCEL or a bare spec-ID header, then AAEL records), parsed by
        deps/eventlog/src/lib.rs (`CcEventLog::try_from`) and replayed against RTMR0..3 (`replay_and_match`, CC-MR
        index 1..4, SHA-384, from 48 zero bytes) in deps/verifier/src/tdx/mod.rs; claims `uefi_event_logs`.
  text  openanolis/trustee v1.5.2 / v1.6.0: `cc_eventlog` replayed against RTMR0..2 only (deps/verifier/src/tdx/
        eventlog.rs `integrity_check`), the text `aa_eventlog` (INIT line, then `domain operation content` lines)
        replayed against RTMR3 from the INIT value (deps/verifier/src/eventlog/mod.rs); claims `aael`, `ccel` and
        flat `AA.eventlog.<domain>.<operation>` (deps/verifier/src/tdx/mod.rs, claims.rs).

Failures raise ValueError with the verifier's words. Simplifications, on purpose: the quote's signature is not
checked (the fake quotes carry none); the event parsers other than EV_EVENT_TAG, the simple-string ones and EFI
variables give approximate `details` and never fail; the `ccel` claims of the text form stay empty; eventlog-rs
(the CCEL parser of <= v1.6.0) is taken to parse what deps/eventlog parses.
"""
import base64, binascii, hashlib, json, struct

HEADER = 48  # the TD quote header; the TD report body follows it
RTMR_OFFSETS = (328, 376, 424, 472)  # TD report body offsets of RTMR0..3 (48 bytes each)

# deps/eventlog/src/ccel/tcg_enum.rs (openanolis v1.6.2): TcgAlgorithm ids, serde names and digest sizes.
ALGORITHMS = {0x1: "RSA", 0x3: "TDES", 0x4: "SHA-1", 0xB: "SHA-256", 0xC: "SHA-384", 0xD: "SHA-512", 0x12: "SM3"}
# TcgEventType, serialized SCREAMING_SNAKE_CASE from the variant names.
EVENT_TYPES = {
    0x0: "EV_PREBOOT_CERT", 0x1: "EV_POST_CODE", 0x2: "EV_UNUSED", 0x3: "EV_NO_ACTION", 0x4: "EV_SEPARATOR",
    0x5: "EV_ACTION", 0x6: "EV_EVENT_TAG", 0x7: "EV_S_CRTM_CONTENTS", 0x8: "EV_S_CRTM_VERSION", 0x9: "EV_CPU_MICROCODE",
    0xA: "EV_PLATFORM_CONFIG_FLAGS", 0xB: "EV_TABLE_OF_DEVICES", 0xC: "EV_COMPACT_HASH", 0xD: "EV_IPL",
    0xE: "EV_IPL_PARTITION_DATA", 0xF: "EV_NONHOST_CODE", 0x10: "EV_NONHOST_CONFIG", 0x11: "EV_NONHOST_INFO",
    0x12: "EV_OMIT_BOOT_DEVICE_EVENTS", 0x80000000: "EV_EFI_EVENT_BASE", 0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT", 0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER", 0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER", 0x80000006: "EV_EFI_GPT_EVENT",
    0x80000007: "EV_EFI_ACTION", 0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB", 0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2", 0x8000000B: "EV_EFI_HANDOFF_TABLES2", 0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x80000010: "EV_EFI_HCRTM_EVENT", 0x800000E0: "EV_EFI_VARIABLE_AUTHORITY", 0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}
AAEL_TAG = 0x4141454C  # deps/eventlog/src/ccel/event_tag.rs AAEL_TAGGED_EVENT_ID, ASCII "AAEL"


class Reader:
    """Little-endian reads that fail like scroll's gread (or a Rust slice out of bounds) instead of panicking."""

    def __init__(self, data, offset=0):
        self.data, self.offset = data, offset

    def u(self, size, what):
        if self.offset + size > len(self.data):
            raise ValueError("Cannot read %s" % what)
        value = int.from_bytes(self.data[self.offset:self.offset + size], "little")
        self.offset += size
        return value

    def take(self, size, what):
        if self.offset + size > len(self.data):
            raise ValueError("Out of bounds while reading %s" % what)
        out = self.data[self.offset:self.offset + size]
        self.offset += size
        return out


def event_details(kind, data, strict_tags):
    """The `details` of one event: event_tag.rs, simple.rs, blank.rs, simple_string.rs, efi_variable.rs
    (openanolis v1.6.2 deps/eventlog/src/ccel/); other parsers approximated (see the module docstring)."""
    name = EVENT_TYPES[kind]
    if name == "EV_EVENT_TAG":
        reader = Reader(data)
        tag = reader.u(4, "event id")
        size = reader.u(4, "length")
        if reader.offset + size > len(data):
            raise ValueError("Failed to read description")
        text = data[8:8 + size]
        details = {"string": text.decode("utf-8", "replace").replace("\0", "")}
        if tag == AAEL_TAG:
            try:
                event = text.decode("utf-8")
            except UnicodeDecodeError:
                if strict_tags:
                    raise ValueError("Illegal AAEL event data")
                return details
            # AaelEventEntry::from_bytes: split at the first two spaces; the content may hold more.
            first = event.find(" ")
            if first < 0:
                raise ValueError("No space found in event string")
            second = event.find(" ", first + 1)
            if second < 0:
                raise ValueError("No second space found in event string")
            content = event[second + 1:]
            try:
                parsed = json.loads(content, parse_constant=_no_constant)
            except ValueError:
                parsed = content
            details["data"] = {"content": parsed, "domain": event[:first], "operation": event[first + 1:second]}
            details["unicode_name"] = "AAEL"
        return details
    if name in ("EV_POST_CODE", "EV_ACTION", "EV_COMPACT_HASH", "EV_OMIT_BOOT_DEVICE_EVENTS", "EV_EFI_ACTION"):
        try:
            return {"string": data.decode("utf-8")}
        except UnicodeDecodeError as error:
            raise ValueError("invalid utf-8 sequence: %s" % error)
    if name in ("EV_EFI_PLATFORM_FIRMWARE_BLOB2", "EV_EFI_HANDOFF_TABLES2"):
        # SimpleStringParser: as written upstream, the text is bytes 1..length.
        if not data:
            raise ValueError("Data is too short: expected at least 1 byte")
        length = data[0]
        if len(data) < length or length < 1:
            raise ValueError("Data is too short: expected at least %d bytes" % length)
        try:
            return {"string": data[1:length].decode("utf-8")}
        except UnicodeDecodeError as error:
            raise ValueError("invalid utf-8 sequence: %s" % error)
    if name in ("EV_EFI_VARIABLE_DRIVER_CONFIG", "EV_EFI_VARIABLE_BOOT", "EV_EFI_VARIABLE_BOOT2", "EV_EFI_VARIABLE_AUTHORITY"):
        reader = Reader(data)
        guid = reader.take(16, "GUID")
        name_length = reader.u(8, "unicode name length")
        data_length = reader.u(8, "variable data length")
        try:
            unicode_name = reader.take(2 * name_length, "description bytes").decode("utf-16-le")
        except UnicodeDecodeError as error:
            raise ValueError(str(error))
        variable = base64.b64encode(reader.take(data_length, "variable_data")).decode() if data_length else ""
        return {"unicode_name": unicode_name, "unicode_name_length": name_length, "variable_data": variable,
                "variable_data_length": data_length,
                "variable_name": "-".join(guid[a:b].hex() for a, b in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 16)))}
    if name in ("EV_IPL", "EV_PLATFORM_CONFIG_FLAGS"):
        return {"string": data.decode("utf-8", "replace").replace("\0", "")}
    return {}


def _no_constant(name):
    raise ValueError("serde_json has no %s" % name)


def parse_tcg2(data, flavour, strict_tags=True):
    """deps/eventlog/src/lib.rs `CcEventLog::try_from` (openanolis v1.6.2, same layout in confidential-containers
    v0.17.0): the SHA1-format first event (an EV_NO_ACTION spec-ID event gives the digest sizes; numberOfAlgorithms
    at byte 24 of its data, which must be consumed exactly), then TCG_PCR_EVENT2 records until a u64 stop flag of
    all ones or all zeros, or the end of the data. Returns the `uefi_event_logs` entries, in log order."""
    reader = Reader(data)
    reader.u(4, "PCR index")
    first = reader.u(4, "event type number")
    if first not in EVENT_TYPES:
        raise ValueError("Unknown event type detected: %#x" % first)
    reader.offset += 20
    size = reader.u(4, "event data size")
    sizes = {}
    if first == 0x3:
        spec = Reader(reader.take(size, "digest_data"), 24)
        for _ in range(spec.u(4, "algorithm array size")):
            alg = spec.u(2, "algorithm id")
            length = spec.u(2, "algorithm size")
            if alg not in ALGORITHMS:
                raise ValueError("Unknown algorithm type detected: %x" % alg)
            sizes[alg] = length
        vendor = spec.u(1, "vendor info size")
        if spec.offset + vendor != size:
            raise ValueError("Unexpected data size consumed for detecting digests")
    entries = []
    while reader.offset < len(data):
        if reader.offset + 8 > len(data):
            raise ValueError("Failed to read potential stop flag")
        if data[reader.offset:reader.offset + 8] in (b"\xff" * 8, bytes(8)):
            break
        index = reader.u(4, "target measurement registry")
        kind = reader.u(4, "event type number")
        if kind not in EVENT_TYPES:
            raise ValueError("Unknown event type detected: %#x" % kind)
        digests = []
        for _ in range(reader.u(4, "digest count")):
            alg = reader.u(2, "algorithm id")
            if alg not in ALGORITHMS:
                raise ValueError("Unknown algorithm type detected: %x" % alg)
            if alg not in sizes:
                raise ValueError("Missing digest size for algorithm: %x" % alg)
            digests.append((alg, reader.take(sizes[alg], "digest")))
        event = reader.take(reader.u(4, "event data size"), "event data")
        entry = {"details": event_details(kind, event, strict_tags),
                 "digests": [{"alg": ALGORITHMS[a], "digest": d.hex()} for a, d in digests],
                 "event": base64.b64encode(event).decode(), "index": index, "type_name": EVENT_TYPES[kind]}
        if flavour == "upstream":
            # confidential-containers v0.17.0 lib.rs: informational `digest_matches_event` (the default
            # compare_digests hashes the event data with each digest's algorithm); openanolis has no such field.
            entry["digest_matches_event"] = all(
                hashlib.new({0xB: "sha256", 0xC: "sha384", 0xD: "sha512"}.get(a, "sha384"), event).digest() == d
                for a, d in digests)
        entries.append(entry)
    return entries


def replay(entries, index):
    """lib.rs `replay`: from 48 zero bytes, m = SHA384(m || digest) over the SHA-384 digests of that CC-MR index."""
    value = bytes(48)
    for entry in entries:
        if entry["index"] == index:
            for digest in entry["digests"]:
                if digest["alg"] == "SHA-384":
                    value = hashlib.sha384(value + bytes.fromhex(digest["digest"])).digest()
    return value


def rtmr(quote, number):
    start = HEADER + RTMR_OFFSETS[number]
    return quote[start:start + 48]


def quote_claims(quote):
    """deps/verifier/src/tdx/claims.rs `generate_parsed_claim` for a v4 quote: header and body fields as hex."""
    body = quote[HEADER:HEADER + 584]
    fields = (("tcb_svn", 0, 16), ("mr_seam", 16, 48), ("mrsigner_seam", 64, 48), ("seam_attributes", 112, 8),
              ("td_attributes", 120, 8), ("xfam", 128, 8), ("mr_td", 136, 48), ("mr_config_id", 184, 48),
              ("mr_owner", 232, 48), ("mr_owner_config", 280, 48), ("rtmr_0", 328, 48), ("rtmr_1", 376, 48),
              ("rtmr_2", 424, 48), ("rtmr_3", 472, 48), ("report_data", 520, 64))
    return {
        "header": {"version": "0400", "att_key_type": quote[2:4].hex(), "tee_type": quote[4:8].hex(),
                   "reserved": quote[8:12].hex(), "vendor_id": quote[12:28].hex(), "user_data": quote[28:48].hex()},
        "body": {name: body[start:start + size].hex() for name, start, size in fields},
    }


def decode_log(text, what):
    """Rust base64 STANDARD: padded, no whitespace."""
    if not isinstance(text, str):
        raise ValueError("Deserialize TDX Evidence failed: invalid type for `%s`, expected a string" % what)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError("base64 decode of %s: %s" % (what, error))


def verify_tcg2(evidence, quote, flavour):
    """deps/verifier/src/tdx/mod.rs `verify_evidence` (openanolis v1.6.2-v1.9.0, confidential-containers
    v0.15.0-v0.21.0): the log replayed against all four RTMRs; the claims (quote, uefi_event_logs, report_data,
    init_data). openanolis takes any present `cc_eventlog` (`if let Some(el)`, so "" fails to parse);
    confidential-containers skips an empty one (`Some(el) if !el.is_empty()`). No log: RTMRs unchecked."""
    claims = {}
    log = evidence.get("cc_eventlog")
    if log is not None and not (flavour == "upstream" and log == ""):
        try:
            entries = parse_tcg2(decode_log(log, "cc_eventlog"), flavour)
        except ValueError as error:
            raise ValueError("Parse CC Eventlog failed: %s" % error)
        for number in range(4):
            calculated, given = replay(entries, number + 1), rtmr(quote, number)
            if calculated != given:
                if flavour == "upstream":
                    raise ValueError("Eventlog does not pass measurement replay CC Event Log Measurement Register [index = %d]. "
                                     "Calculated value: %s, Given value: %s" % (number + 1, calculated.hex(), given.hex()))
                raise ValueError("CCEL eventlog does not pass RTMR [%d] check. CCEL value: %s, Quote value: %s"
                                 % (number + 1, calculated.hex(), given.hex()))
        claims["uefi_event_logs"] = entries
    claims["quote"] = quote_claims(quote)
    claims["report_data"] = body_hex(quote, 520, 64)
    claims["init_data"] = body_hex(quote, 184, 48)
    return claims


def body_hex(quote, start, size):
    return quote[HEADER + start:HEADER + start + size].hex()


def verify_text(evidence, quote):
    """openanolis v1.5.2 / v1.6.0 deps/verifier/src/tdx/mod.rs: `cc_eventlog` (when non-empty) must replay to
    RTMR0..2 (RTMR3 is not compared there); `aa_eventlog` (when non-empty) must parse and replay to RTMR3."""
    log = evidence.get("cc_eventlog")
    if log is not None and log != "":
        try:
            entries = parse_tcg2(decode_log(log, "cc_eventlog"), "openanolis", strict_tags=False)
        except ValueError as error:
            raise ValueError("Parse CC Eventlog failed: %s" % error)
        if any(replay(entries, number + 1) != rtmr(quote, number) for number in range(3)):
            raise ValueError("RTMR 0, 1, 2 values from TD quote is not equal with the values from EventLog")
    claims = {}
    aa = evidence.get("aa_eventlog")
    if aa is not None and not isinstance(aa, str):
        raise ValueError("Deserialize TDX Evidence failed: invalid type for `aa_eventlog`, expected a string")
    if aa:
        try:
            algorithm, init_state, events = parse_text_aael(aa)
        except ValueError as error:
            raise ValueError("failed to parse AA Eventlog from evidence: %s" % error)
        calculated = replay_text(algorithm, init_state, events)
        if calculated != rtmr(quote, 3):
            raise ValueError("AA eventlog does not pass check. AAEL value : %s, Quote value %s"
                             % (calculated.hex(), rtmr(quote, 3).hex()))
        aael = {}
        for domain, operation, content in events:  # AAEventlog::to_parsed_claims
            aael.setdefault("%s/%s" % (domain, operation), []).append(content)
        claims["aael"] = aael
    claims["quote"] = quote_claims(quote)
    claims["ccel"] = {}
    claims["report_data"] = body_hex(quote, 520, 64)
    claims["init_data"] = body_hex(quote, 184, 48)
    if aa is not None:
        # tdx/mod.rs: split('\n'), splitn(3, ' '); INIT skipped, stop at an empty first field, the last one wins.
        for line in aa.split("\n"):
            parts = line.split(" ", 2)
            if parts[0] == "INIT":
                continue
            if parts[0] == "":
                break
            if len(parts) == 3:
                claims["AA.eventlog.%s.%s" % (parts[0], parts[1])] = parts[2]
    return claims


def parse_text_aael(text):
    """deps/verifier/src/eventlog/mod.rs `AAEventlog::from_str` (openanolis v1.5.2 = v1.6.0)."""
    # str::lines(): split at "\n", a "\r" before it dropped, no empty last line.
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise ValueError("at least one line should be included in AAEL")
    init = lines[0].split()
    if len(init) != 2:
        raise ValueError("Illegal INIT event record.")
    if init[0] != "INIT":
        raise ValueError("INIT event should start with `INIT` key word")
    if "/" not in init[1]:
        raise ValueError("INIT event should have `<sha-algorithm>/<init-PCR-value>` as content after `INIT`")
    algorithm, state = init[1].split("/", 1)
    algorithm = algorithm.lower()
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise ValueError("parse Hash Algorithm in INIT entry")
    try:
        init_state = bytes.fromhex(state)
    except ValueError:
        raise ValueError("parse init state in INIT entry")
    events = []
    for line in lines[1:]:
        sections = line.rstrip().split(" ")
        if len(sections) != 3:
            raise ValueError("Illegal AA event entry format. Should be `<domain> <operation> <content>`")
        events.append(tuple(sections))
    return algorithm, init_state, events


def replay_text(algorithm, init_state, events):
    """`accumulate_hash`: from the INIT value, fold H(state || H("INIT <alg>/<hex>")) (the alg lowercase, the hex
    re-encoded lowercase), then H(state || H("domain operation content")) per event."""
    def h(data):
        return hashlib.new(algorithm, data).digest()
    state = h(init_state + h(("INIT %s/%s" % (algorithm, init_state.hex())).encode()))
    for domain, operation, content in events:
        state = h(state + h(("%s %s %s" % (domain, operation, content)).encode()))
    return state


def flatten_claims(tee, claims):
    """attestation-service/src/token/simple.rs `flatten_claims` (openanolis v1.5.2-v1.9.0; confidential-containers
    v0.15.0): every key but report_data/init_data under "<tee>.", nested objects joined with ".", arrays and
    scalars kept as they are (an array is NOT flattened); report_data and init_data at the top, "" when absent."""
    flat = {}

    def helper(value, prefix):
        if isinstance(value, dict):
            for key, child in value.items():
                helper(child, "%s.%s" % (prefix, key))
        else:
            flat[prefix] = value

    for key, value in claims.items():
        if key not in ("report_data", "init_data"):
            helper(value, "%s.%s" % (tee, key))
    flat["report_data"] = claims.get("report_data", "")
    flat["init_data"] = claims.get("init_data", "")
    return flat


def tcb_status(tee, claims):
    """simple.rs: `"tcb-status": serde_json::to_string(&flattened_claims)`: a JSON *string*, not an object
    (serde_json's Map is sorted by key; compact)."""
    return json.dumps(flatten_claims(tee, claims), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def model_digest(claims):
    """The model caid (or Trustiflux's PAI) says it loaded: the last `caid load-model` event's content.digest, or,
    when there is no such event, the last `trustiflux.alibaba.com pai/load-model` event's content.hash. From the
    TCG2 claims (uefi_event_logs AAEL entries) or the text ones (aael). Returns (digest or None, what was seen)."""
    found = {"caid": None, "pai": None}
    for entry in claims.get("uefi_event_logs") or []:
        details = entry.get("details") or {}
        if entry.get("type_name") != "EV_EVENT_TAG" or details.get("unicode_name") != "AAEL":
            continue
        data = details.get("data") or {}
        _note(found, data.get("domain"), data.get("operation"), data.get("content"))
    for key, contents in (claims.get("aael") or {}).items():
        domain, _, operation = key.partition("/")
        for content in contents:
            try:
                content = json.loads(content, parse_constant=_no_constant)
            except ValueError:
                pass
            _note(found, domain, operation, content)
    if found["caid"] is not None:
        content = found["caid"]
        return (content.get("digest") if isinstance(content, dict) else None), "caid load-model"
    if found["pai"] is not None:
        content = found["pai"]
        return (content.get("hash") if isinstance(content, dict) else None), "trustiflux.alibaba.com pai/load-model"
    return None, "no load-model event"


def _note(found, domain, operation, content):
    if (domain, operation) == ("caid", "load-model"):
        found["caid"] = content
    elif (domain, operation) == ("trustiflux.alibaba.com", "pai/load-model"):
        found["pai"] = content
