#!/usr/bin/env python3
"""An OSS-compatible test server on loopback for caid's fetcher tests.

It serves a directory as a bucket (path-style URLs), recomputes every request's V4 signature with the official
alibabacloud-oss-v2 SDK's signer and rejects mismatches with OSS's error XML, answers ListObjectsV2 (paged,
encoding-type=url) and ranged GETs with the SDK's CRC-64, and injects faults read from a JSON file on each request.
"""
import argparse, datetime, hashlib, json, os, threading, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qsl, quote, unquote

from alibabacloud_oss_v2.signer import SignerV4
from alibabacloud_oss_v2.credentials import StaticCredentialsProvider
from alibabacloud_oss_v2.types import HttpRequest, SigningContext
from alibabacloud_oss_v2.crc import Crc64
from peerutil import announce_port

args = None
lock = threading.Lock()
stats = {"get_bytes": 0, "requests": 0, "faults": {}, "ranges": []}
crc_cache = {}
wrong_crc_sent = set()  # keys whose one wrong CRC header ("wrong_crc_once") has gone out


def count_fault(name):
    with lock:
        stats["faults"][name] = stats["faults"].get(name, 0) + 1


def faults():
    try:
        with open(args.faults) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def take_fault(name):
    """Counts down a fault budget; true while it lasts."""
    with lock:
        budget = faults().get(name, 0)
        used = stats["faults"].get(name, 0)
        if used < budget:
            stats["faults"][name] = used + 1
            return True
    return False


def object_info(path):
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in crc_cache:
        crc, md5 = Crc64(0), hashlib.md5()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                crc.update(chunk)
                md5.update(chunk)
        crc_cache[key] = (crc.sum64(), '"%s"' % md5.hexdigest().upper())
    crc, etag = crc_cache[key]
    # The object "changes" (a new ETag, same bytes) once this many object GETs have been served.
    after = faults().get("etag_change_after_gets")
    if after is not None and stats.get("object_gets", 0) >= after:
        etag = etag[:-1] + "-v2" + '"'
    return st.st_size, crc, etag


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def date_time_string(self, timestamp=None):
        # The Date header carries the server's clock, skewed when a test asks for it, as OSS's own clock would be.
        now = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=faults().get("skew_seconds", 0))
        return now.strftime("%a, %d %b %Y %H:%M:%S GMT")

    def error(self, status, code, message, extra=None):
        rid = uuid.uuid4().hex.upper()
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code><Message>%s</Message>'
                '<RequestId>%s</RequestId></Error>' % (code, message, rid)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-oss-request-id", rid)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def check_signature(self, bucket, key, query):
        auth = self.headers.get("Authorization", "")
        date = self.headers.get("x-oss-date", "")
        try:
            when = datetime.datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            return "missing or malformed x-oss-date"
        skew = faults().get("skew_seconds", 0)
        server_now = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=skew)
        if abs((server_now - when).total_seconds()) > 900:
            return "skew"
        cred = StaticCredentialsProvider(args.ak, args.sk, args.token or None).get_credentials()
        req = HttpRequest(self.command, "http://%s.example/%s%s" % (bucket, quote(key or ""), ("?" + query) if query else ""))
        for k, v in self.headers.items():
            if k.lower() not in ("authorization", "host", "connection", "user-agent", "content-length"):
                req.headers[k] = v
        ctx = SigningContext(bucket=bucket, key=key, request=req, credentials=cred, product="oss",
                             region=args.region, signing_time=when)
        SignerV4().sign(ctx)
        return None if req.headers.get("Authorization") == auth else "signature"

    def do_GET(self):
        with lock:
            stats["requests"] += 1
        parts = urlsplit(self.path)
        if parts.path == "/__stats":
            body = json.dumps(stats).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        segments = parts.path.split("/", 2)
        bucket = unquote(segments[1]) if len(segments) > 1 else ""
        key = unquote(segments[2]) if len(segments) > 2 and segments[2] else None
        if bucket != args.bucket:
            return self.error(404, "NoSuchBucket", "The specified bucket does not exist.")
        problem = self.check_signature(bucket, key, parts.query)
        if problem == "skew":
            return self.error(403, "RequestTimeTooSkewed", "The difference between the request time and the current time is too large.")
        if problem:
            return self.error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided.")
        if take_fault("status_503"):
            return self.error(503, "ServiceUnavailable", "Please reduce your request rate.", {"x-oss-qos-delay-time": "50"})
        if key is None:
            return self.list_objects(dict(parse_qsl(parts.query, keep_blank_values=True)))
        return self.get_object(key)

    def list_objects(self, q):
        prefix = q.get("prefix", "")
        keys = []
        for dirpath, _, files in os.walk(args.root):
            for name in files:
                rel = os.path.relpath(os.path.join(dirpath, name), args.root)
                if rel.startswith(prefix):
                    keys.append(rel)
        keys.sort()
        start = int(q.get("continuation-token") or 0)
        page = keys[start:start + args.page_size]
        truncated = start + args.page_size < len(keys)
        # A listing that never ends: every page says there is another, with a fresh token.
        endless = faults().get("endless_listing", False)
        if endless:
            truncated = True
        enc = (lambda s: quote(s, safe="")) if q.get("encoding-type") == "url" else (lambda s: s)
        xml = ['<?xml version="1.0" encoding="UTF-8"?>', "<ListBucketResult>", "<Name>%s</Name>" % args.bucket,
               "<Prefix>%s</Prefix>" % enc(prefix)]
        if q.get("encoding-type") == "url":
            xml.append("<EncodingType>url</EncodingType>")
        xml.append("<IsTruncated>%s</IsTruncated>" % ("true" if truncated else "false"))
        if truncated:
            # "same": a server that loops, answering every page with the token it was asked for.
            token = start if endless == "same" else start + args.page_size
            xml.append("<NextContinuationToken>%d</NextContinuationToken>" % token)
        absurd = faults().get("absurd_size", {})
        for k in page:
            size, _, etag = object_info(os.path.join(args.root, k))
            size = absurd.get(k, size)
            xml.append("<Contents><Key>%s</Key><ETag>%s</ETag><Size>%d</Size></Contents>" % (enc(k), etag, size))
        xml.append("</ListBucketResult>")
        body = "\n".join(xml).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def get_object(self, key):
        path = os.path.join(args.root, key)
        if not os.path.isfile(path):
            return self.error(404, "NoSuchKey", "The specified key does not exist.")
        with lock:
            stats["object_gets"] = stats.get("object_gets", 0) + 1
        size, crc, etag = object_info(path)
        if self.headers.get("If-Match") and self.headers.get("If-Match") != etag:
            return self.error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold.")
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and size > 0:
            a, b = rng.replace("bytes=", "").split("-")
            start, end, status = int(a), min(int(b), size - 1), 206
        length = max(0, end - start + 1)
        current = faults()
        # A range the server will not serve while the entry is in the fault file: a retryable OSS error for every GET
        # that covers byte `offset` of `key`.
        for refused in current.get("refuse_ranges", []):
            if refused.get("key") == key and start <= refused.get("offset", -1) <= end:
                count_fault("refuse_ranges")
                return self.error(503, "ServiceUnavailable", "Please reduce your request rate.", {"x-oss-qos-delay-time": "50"})
        # The first CRC header sent for a listed key is wrong, the bytes right; later ones are right.
        if key in current.get("wrong_crc_once", []):
            with lock:
                first = key not in wrong_crc_sent
                wrong_crc_sent.add(key)
            if first:
                crc ^= 1
                count_fault("wrong_crc_once")
        delay = current.get("delay_ms", 0)
        if delay:
            time.sleep(delay / 1000)
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", etag)
        self.send_header("x-oss-hash-crc64ecma", str(crc))
        self.send_header("x-oss-request-id", uuid.uuid4().hex.upper())
        if status == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(length)
        if length > 1 and take_fault("stall"):
            # Half the body, then silence with the connection open (a NAT drop: no FIN, no RST).
            self.wfile.write(data[: length // 2])
            self.wfile.flush()
            time.sleep(faults().get("stall_seconds", 30))
            self.close_connection = True
            return
        if length > 1 and take_fault("truncate"):
            self.wfile.write(data[: length // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if take_fault("corrupt") and length > 0:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        self.wfile.write(data)
        with lock:
            stats["get_bytes"] += len(data)
            stats["ranges"].append([os.path.basename(path), start, length])


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--ak", required=True)
    p.add_argument("--sk", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--region", default="cn-test")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--page-size", type=int, default=1000)
    p.add_argument("--faults", default="/nonexistent")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port-file", help="also write the port here (atomically)")
    args = p.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print("listening %d" % server.server_address[1], flush=True)
    if args.port_file:
        announce_port(args.port_file, server.server_address[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
