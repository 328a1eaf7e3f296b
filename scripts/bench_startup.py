#!/usr/bin/env python3
"""The startup benchmark's driver (issue #18): called by scripts/bench-startup.sh, which holds the cleanup trap.

From start to the model read, against the same ciphertext on loopback, throttled to a shared rate:
  fetch        `caid fetch` alone (the download, nothing else)
  caid-stream  `caid run` with CAID_MOUNT_STREAMING=on (mount once key and listing are there)
  caid-off     `caid run` with CAID_MOUNT_STREAMING=off (download everything, then mount)
  s3fs         s3fs on a bucket served by moto, `gocryptfs -ro` on top (the CAI stack's ossfs + gocryptfs), with
               s3fs's defaults and with the options that were fastest here
For each: the key (caid: its own log line; s3fs: 0, the password is a file), when every model file is listed in the
mount point, the first byte of the first shard, the last byte of the last shard. The reader does what a model loader
does: polls the mount point for the files, reads the JSON files, then every shard in order, sequentially, in full, and
checks each file's CRC-32 against the plaintext's.

Every child process is recorded in WORK/pids and every mount point in WORK/mounts so that the shell trap can end and
unmount them if this driver dies; the driver itself ends them in `finally`.
"""
import argparse, datetime, json, os, re, shutil, signal, statistics, subprocess, sys, threading, time, zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, "Tests", "peers")
BUCKET, PREFIX = "models", "m"
OSS_AK, OSS_SK, REGION = "LTAIbench", "bench-secret", "cn-bench"
S3_AK, S3_SK = "bench", "bench-secret"
JSON_FILES = {
    "config.json": b'{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32}\n',
    "generation_config.json": b'{"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.6}\n',
}
# s3fs 1.90's defaults (parallel_count=5, multipart_size=10 MB, no disk cache) and the fastest set found here; see
# docs/benchmarks.md for the ones tried.
S3FS_OPTIONS = {
    "s3fs-default": "",
    "s3fs-tuned": os.environ.get("S3FS_TUNED", "parallel_count=8,multipart_size=8"),
}
SETUPS = ["fetch", "caid-stream", "caid-off"] + list(S3FS_OPTIONS)


def log(*a):
    print("bench-startup:", *a, file=sys.stderr, flush=True)


# The servers stand in for a remote OSS: on a machine of few cores they must not take the client's CPU, or the
# benchmark measures the two competing for it rather than the download and the read overlapping. With PIN (the
# default on 2 or more cores) the driver, its reader and every client it starts (caid, s3fs, gocryptfs, curl) run on
# CPU 0, and the servers and throttle proxies on the others.
PIN = os.environ.get("PIN", "1") != "0" and (os.cpu_count() or 1) >= 2
SERVER_CPUS = "1-%d" % ((os.cpu_count() or 2) - 1)


def server(argv):
    return (["taskset", "-c", SERVER_CPUS] if PIN else []) + argv


class Run:
    """The children and mounts of one driver, recorded for the shell trap too."""

    def __init__(self, work):
        self.work, self.procs, self.mounts = work, [], []

    def spawn(self, argv, **kw):
        p = subprocess.Popen(argv, **kw)
        self.procs.append(p)
        with open(os.path.join(self.work, "pids"), "a") as f:
            f.write("%d\n" % p.pid)
        return p

    def mount_point(self, path):
        os.makedirs(path, exist_ok=True)
        if path not in self.mounts:
            self.mounts.append(path)
            with open(os.path.join(self.work, "mounts"), "a") as f:
                f.write(path + "\n")
        return path

    def stop(self, p, timeout=30):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)

    def unmount(self, path):
        if os.path.ismount(path):
            if subprocess.run(["fusermount3", "-u", path], stderr=subprocess.DEVNULL).returncode != 0:
                subprocess.run(["umount", "-l", path], stderr=subprocess.DEVNULL)

    def close(self):
        for m in reversed(self.mounts):
            self.unmount(m)
        for p in reversed(self.procs):
            try:
                self.stop(p, 10)
            except Exception:
                pass


def wait_for(predicate, timeout, what, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise RuntimeError("%s: not within %d s" % (what, timeout))


def read_port(path, timeout=30):
    wait_for(lambda: os.path.exists(path) and open(path).read().strip(), timeout, "port file " + path, 0.05)
    return int(open(path).read().split()[0])


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# ---------------------------------------------------------------------------------------------------------------------
# The model: plaintext generated once, encrypted with `caid encrypt`, kept in .cache/bench-startup/ between runs.

def shard_names(n=4):
    return ["model-%05d-of-%05d.safetensors" % (i, n) for i in range(1, n + 1)]


def prepare_model(caid, size_mib, cache):
    """Returns (cipher root holding PREFIX/ and PREFIX.caid-manifest.json, password file, {name: [size, crc32]})."""
    base = os.path.join(cache, "model-%d" % size_mib)
    expected_file = os.path.join(base, "plain.json")
    if os.path.exists(expected_file) and os.path.exists(os.path.join(base, "cipher", PREFIX + ".caid-manifest.json")):
        return os.path.join(base, "cipher"), os.path.join(base, "password"), json.load(open(expected_file))
    shutil.rmtree(base, ignore_errors=True)
    plain = os.path.join(base, "plain")
    os.makedirs(plain)
    expected = {}
    shard_bytes = (size_mib << 20) // 4
    for name in shard_names():
        crc = 0
        with open(os.path.join(plain, name), "wb") as f:
            left = shard_bytes
            while left:
                chunk = os.urandom(min(left, 8 << 20))
                crc = zlib.crc32(chunk, crc)
                f.write(chunk)
                left -= len(chunk)
        expected[name] = [shard_bytes, crc]
    # A tokenizer.json of realistic size (a few MB of JSON), the other two small.
    vocab = {"tok%06d" % i: i for i in range(120000)}
    files = dict(JSON_FILES, **{"tokenizer.json": json.dumps({"model": {"vocab": vocab}}).encode()})
    for name, data in files.items():
        with open(os.path.join(plain, name), "wb") as f:
            f.write(data)
        expected[name] = [len(data), zlib.crc32(data)]
    password = os.path.join(base, "password")
    with open(password, "w") as f:
        f.write(os.urandom(18).hex() + "\n")
    os.chmod(password, 0o600)
    os.makedirs(os.path.join(base, "cipher"))
    log("encrypting the %d MiB model with %s (once; kept in %s)" % (size_mib, caid, base))
    subprocess.run([caid, "encrypt", "--plain", plain, "--cipher", os.path.join(base, "cipher", PREFIX),
                    "--passfile", password], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(plain)
    with open(expected_file, "w") as f:
        json.dump(expected, f)
    return os.path.join(base, "cipher"), password, expected


def tree_bytes(root):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


# ---------------------------------------------------------------------------------------------------------------------
# The reader: a model loader's reads.

def read_model(mnt, expected, t0, timeout):
    """Polls `mnt` until every expected file is listed, then reads the JSON files and each shard in order, fully and
    sequentially in 1 MiB reads. Returns the times (s since t0) and any problem."""
    names = set(expected)
    deadline = time.monotonic() + timeout

    def listed():
        try:
            return names <= set(os.listdir(mnt))
        except OSError:
            return False

    wait_for(listed, timeout, "the model files in " + mnt)
    out = {"files": time.monotonic() - t0}
    order = sorted(n for n in expected if not n.endswith(".safetensors")) + shard_names()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    errors = []
    for name in order:
        size, want = expected[name]
        crc, got = 0, 0
        try:
            with open(os.path.join(mnt, name), "rb", buffering=0) as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    if got == 0 and name == shard_names()[0]:
                        out["first"] = time.monotonic() - t0
                    crc = zlib.crc32(view[:n], crc)
                    got += n
                    if time.monotonic() > deadline:
                        raise TimeoutError("reading %s: not done within %d s" % (name, timeout))
        except OSError as e:
            errors.append("%s: %s after %d bytes" % (name, e, got))
            continue
        if got != size or crc != want:
            errors.append("%s: WRONG BYTES (%d bytes, crc32 %08x; expected %d, %08x)" % (name, got, crc, size, want))
    out["last"] = time.monotonic() - t0
    if errors:
        out["errors"] = errors
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The setups.

def caid_env(w, oss_port, kbs_port, streaming, with_streaming_key):
    lines = [
        'TRUSTEE_URL="http://127.0.0.1:%d/trustee/"' % kbs_port,
        'TRUSTEE_POLICY="default"',
        'MODEL_KEY_ID="kbs:///default/aliyun/model-decryption-key"',
        'MODEL_ENCRYPTION_METHOD="gocryptfs"',
        'MODEL_OSS_BUCKET_PATH="%s:/%s"' % (BUCKET, PREFIX),
        'MODEL_OSS_ENDPOINT="http://127.0.0.1:%d"' % oss_port,
        'MODEL_OSS_ACCESS_KEY_ID="%s"' % OSS_AK,
        'MODEL_OSS_SECRET_ACCESS_KEY="%s"' % OSS_SK,
        "MODEL_SERVICE_PORT=%d" % w["service_port"],
        "MODEL_MOUNT_POINT=%s" % w["caid_mnt"],
        "CAID_HEALTH_SOCKET=%s" % os.path.join(w["dir"], "caid.sock"),
        "CAID_CACHE_DIR=%s" % w["caid_cache"],
        "CAID_OSS_REGION=%s" % REGION,
        "CAID_ATTESTER=sample",
        "CAID_GATEWAY_MODE=mapping",
        "CAID_GATEWAY_PORT=%d" % w["gateway_port"],
        "CAID_SERVICE_GUARD=off",
    ]
    if with_streaming_key:
        lines.append("CAID_MOUNT_STREAMING=%s" % ("on" if streaming else "off"))
    path = os.path.join(w["dir"], "cai-%s-%d.env" % ("stream" if streaming else "off", oss_port))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


KEY_LINE = re.compile(r"<\d>key: .*(received|running)")
MOUNT_LINE = re.compile(r"<\d>cachefs: .*mounted")


def run_caid(run, w, caid, env, expected, timeout):
    shutil.rmtree(w["caid_cache"], ignore_errors=True)
    drop_caches()
    stamps = []
    logfile = open(os.path.join(w["dir"], "caid-run.log"), "w")
    # BENCH_PERF=PREFIX: a profile of CPU 0 (the clients' CPU) from caid's start to the last byte read, written to
    # PREFIX-<env file name>.data, to compare where the CPU goes with and without streaming.
    perf = None
    if os.environ.get("BENCH_PERF"):
        target = "%s-%s.data" % (os.environ["BENCH_PERF"], os.path.splitext(os.path.basename(env))[0])
        perf = subprocess.Popen(["perf", "record", "-C", "0", "-F", "999", "-g", "-o", target],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # perf needs a moment before it samples
    t0 = time.monotonic()
    p = run.spawn([caid, "run", "--env", env], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stamp():  # caid's stderr lines with the time they arrived
        for raw in p.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            stamps.append((time.monotonic() - t0, line))
            logfile.write("%8.3f %s\n" % (stamps[-1][0], line))
    reader = threading.Thread(target=stamp, daemon=True)
    reader.start()
    try:
        out = read_model(w["caid_mnt"], expected, t0, timeout)
    except Exception as e:
        out = {"errors": [str(e)]}
    finally:
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait(30)
        run.stop(p)
        reader.join(5)
        logfile.close()
        run.unmount(w["caid_mnt"])
    key = next((t for t, l in stamps if KEY_LINE.search(l)), None)
    mounted = next((t for t, l in stamps if MOUNT_LINE.search(l)), None)
    out.update(key=key, mounted=mounted)
    if key is None:
        out.setdefault("errors", []).append("no key line in caid's log (see %s)" % logfile.name)
    if out.get("errors"):
        out["log_tail"] = [l for _, l in stamps[-15:]]
    return out


def run_fetch(w, caid, env, timeout):
    shutil.rmtree(w["caid_cache"], ignore_errors=True)
    drop_caches()
    t0 = time.monotonic()
    r = subprocess.run([caid, "fetch", "--env", env], capture_output=True, timeout=timeout)
    t = time.monotonic() - t0
    out = {"last": t}
    if r.returncode != 0:
        out["errors"] = ["caid fetch exited %d: %s" % (r.returncode, r.stderr.decode(errors="replace")[-800:])]
    return out


def run_s3fs(run, w, s3_port, options, password, expected, timeout):
    s3, plain = w["s3_mnt"], w["s3_plain"]
    for d in (s3, plain):
        if os.path.ismount(d):
            raise RuntimeError("%s is still mounted" % d)
    cache = re.search(r"use_cache=([^,]+)", options or "")
    if cache:  # s3fs's disk cache outlives its mount: empty it, or a later run reads the earlier one's download
        shutil.rmtree(cache.group(1), ignore_errors=True)
        os.makedirs(cache.group(1))
    drop_caches()
    opts = "url=http://127.0.0.1:%d,use_path_request_style,passwd_file=%s,ro,logfile=%s" % (
        s3_port, w["s3_passwd"], os.path.join(w["dir"], "s3fs.log"))
    if options:
        opts += "," + options
    t0 = time.monotonic()
    s3fs = run.spawn(["s3fs", "%s:/%s" % (BUCKET, PREFIX), s3, "-f", "-o", opts],
                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(w["dir"], "s3fs.err"), "w"))
    gocryptfs = None
    try:
        wait_for(lambda: os.path.ismount(s3) or s3fs.poll() is not None, 30, "the s3fs mount")
        if s3fs.poll() is not None:
            raise RuntimeError("s3fs exited %d (see %s/s3fs.err)" % (s3fs.returncode, w["dir"]))
        gocryptfs = run.spawn(["gocryptfs", "-fg", "-q", "-ro", "-passfile", password, s3, plain],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(w["dir"], "gocryptfs.err"), "w"))
        out = read_model(plain, expected, t0, timeout)
        out["key"] = 0.0
    except Exception as e:
        out = {"errors": [str(e)]}
    finally:
        run.unmount(plain)
        if gocryptfs:
            run.stop(gocryptfs)
        run.unmount(s3)
        run.stop(s3fs)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Servers.

def start_servers(run, w, cipher, password):
    # The ciphertext on tmpfs: dropping the page cache before each setup empties the client's caches, not the server's.
    shutil.copytree(cipher, w["bucket"])
    run.spawn(server([sys.executable, os.path.join(PEERS, "oss_server.py"), "--root", w["bucket"], "--bucket", BUCKET,
               "--ak", OSS_AK, "--sk", OSS_SK, "--region", REGION, "--port-file", os.path.join(w["dir"], "oss.port")]),
              stdout=subprocess.DEVNULL, stderr=open(os.path.join(w["dir"], "oss.err"), "w"))
    run.spawn(server([sys.executable, os.path.join(PEERS, "trustee_server.py"), "--dialect", "current", "--prefix", "/trustee/",
               "--resource", "default/aliyun/model-decryption-key=%s" % password,
               "--port-file", os.path.join(w["dir"], "kbs.port")]),
              stdout=subprocess.DEVNULL, stderr=open(os.path.join(w["dir"], "kbs.err"), "w"))
    run.spawn(server([sys.executable, os.path.abspath(__file__), "moto", "--port-file", os.path.join(w["dir"], "moto.port")]),
              stdout=subprocess.DEVNULL, stderr=open(os.path.join(w["dir"], "moto.err"), "w"),
              env=dict(os.environ, MOTO_S3_DEFAULT_KEY_BUFFER_SIZE=str(4 << 30)))
    ports = {n: read_port(os.path.join(w["dir"], n + ".port")) for n in ("oss", "kbs", "moto")}
    # oss_server.py computes each object's CRC-64 (in Python, about 250 MB/s) on the first request that needs it
    # and keeps it: ask for one byte of every object now, so that no measured run pays for it.
    for d, _, files in os.walk(w["bucket"]):
        for name in files:
            key = os.path.relpath(os.path.join(d, name), w["bucket"])
            subprocess.run(["curl", "-sf", "-o", "/dev/null"] + oss_signed_headers(key, "bytes=0-0") +
                           ["http://127.0.0.1:%d/%s/%s" % (ports["oss"], BUCKET, key)], check=True, timeout=60)
    upload_s3(ports["moto"], w["bucket"])
    with open(w["s3_passwd"], "w") as f:
        f.write("%s:%s\n" % (S3_AK, S3_SK))
    os.chmod(w["s3_passwd"], 0o600)
    return ports


def start_proxy(run, w, upstream, rate_bytes, name):
    port_file = os.path.join(w["dir"], "%s.port" % name)
    run.spawn(server([sys.executable, os.path.join(ROOT, "scripts", "throttle_proxy.py"), "--upstream", str(upstream),
               "--rate", str(rate_bytes), "--port-file", port_file]), stdout=subprocess.DEVNULL,
              stderr=open(os.path.join(w["dir"], "%s.err" % name), "w"))
    return read_port(port_file)


def upload_s3(port, root):
    import boto3
    s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:%d" % port, aws_access_key_id=S3_AK,
                      aws_secret_access_key=S3_SK, region_name="us-east-1")
    wait_for(lambda: _reachable(s3), 30, "moto", 0.1)
    s3.create_bucket(Bucket=BUCKET)
    for d, _, files in os.walk(root):
        for name in files:
            path = os.path.join(d, name)
            with open(path, "rb") as f:
                s3.put_object(Bucket=BUCKET, Key=os.path.relpath(path, root), Body=f)


def _reachable(s3):
    try:
        s3.list_buckets()
        return True
    except Exception:
        return False


def moto_main(args):
    """moto's server with one change: a GET hands out the stored bytes instead of a copy of the whole object.
    moto 5.x's get_object reads `key.value` (the whole object, copied) for every request and then slices the range
    (moto/s3/responses.py get_object and _handle_range_header), so a 10 MiB range of a 256 MiB object costs a 256 MiB
    copy and ranged reads run at about 40 MB/s. With the objects in memory (MOTO_S3_DEFAULT_KEY_BUFFER_SIZE above
    their size) BytesIO.getvalue() returns the buffer without copying, and only the range is copied."""
    import moto.s3.models as models
    from moto.server import ThreadedMotoServer

    def value(self):
        with self.lock:
            f = getattr(self._value_buffer, "_file", None)
            if hasattr(f, "getvalue"):
                return f.getvalue()
            self._value_buffer.seek(0)
            return self._value_buffer.read()
    models.FakeKey.value = models.FakeKey.value.getter(value)
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGINT])  # for sigwait, in every thread
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with open(args.port_file + ".tmp", "w") as f:
        f.write("%d\n" % port)
    os.rename(args.port_file + ".tmp", args.port_file)
    signal.sigwait([signal.SIGTERM, signal.SIGINT])
    server.stop()


# ---------------------------------------------------------------------------------------------------------------------
# Checking the throttle with curl.

def oss_signed_headers(key, rng):
    from alibabacloud_oss_v2.signer import SignerV4
    from alibabacloud_oss_v2.credentials import StaticCredentialsProvider
    from alibabacloud_oss_v2.types import HttpRequest, SigningContext
    from urllib.parse import quote
    req = HttpRequest("GET", "http://%s.example/%s" % (BUCKET, quote(key)))
    req.headers["Range"] = rng
    ctx = SigningContext(bucket=BUCKET, key=key, request=req, product="oss", region=REGION,
                         credentials=StaticCredentialsProvider(OSS_AK, OSS_SK).get_credentials(),
                         signing_time=datetime.datetime.now(datetime.timezone.utc))
    SignerV4().sign(ctx)
    return ["-H", "Accept:"] + [x for k, v in req.headers.items() for x in ("-H", "%s: %s" % (k, v))]


def curl_rate(port, key, size, parts, signed):
    """MB/s of `parts` parallel curls that together GET the whole object."""
    step = size // parts
    argvs = []
    for i in range(parts):  # signed before the clock starts
        rng = "bytes=%d-%d" % (i * step, size - 1 if i == parts - 1 else (i + 1) * step - 1)
        extra = oss_signed_headers(key, rng) if signed else [
            "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", "%s:%s" % (S3_AK, S3_SK), "-H", "Range: " + rng]
        argvs.append(["curl", "-sf", "-o", "/dev/null"] + extra + ["http://127.0.0.1:%d/%s/%s" % (port, BUCKET, key)])
    t0 = time.monotonic()
    procs = [subprocess.Popen(argv) for argv in argvs]
    codes = [p.wait(300) for p in procs]
    t = time.monotonic() - t0
    if any(codes):
        raise RuntimeError("curl of %s on port %d failed: %s" % (key, port, codes))
    return size / t / 1e6


# ---------------------------------------------------------------------------------------------------------------------
# The whole benchmark.

def client_cpu():
    """(busy, total) jiffies of CPU 0, where the clients and the reader run with PIN (/proc/stat, proc(5))."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu0 "):
                fields = [int(x) for x in line.split()[1:9]]  # guest time is already in user
                idle = fields[3] + fields[4]  # idle + iowait
                return sum(fields) - idle, sum(fields)
    return 0, 0


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def bench(args):
    work = args.work
    if PIN:
        os.sched_setaffinity(0, {0})  # the driver, its reader and the clients it starts
    run = Run(work)
    w = {"dir": work, "bucket": os.path.join(args.tmpfs, "bucket"), "caid_cache": os.path.join(work, "caid-cache"),
         "caid_mnt": run.mount_point(os.path.join(work, "caid-mnt")),
         "s3_mnt": run.mount_point(os.path.join(work, "s3-mnt")),
         "s3_plain": run.mount_point(os.path.join(work, "s3-plain")),
         "s3_passwd": os.path.join(work, "s3-passwd")}
    import socket

    def free_port():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port
    w["service_port"], w["gateway_port"] = free_port(), free_port()
    results, checks = [], {}
    try:
        cipher, password, expected = prepare_model(args.caid, args.size_mib, args.cache)
        total = tree_bytes(cipher)
        ports = start_servers(run, w, cipher, password)
        # Whether this caid knows CAID_MOUNT_STREAMING: check-config warns about keys it does not know.
        probe = caid_env(w, ports["oss"], ports["kbs"], True, True)
        cc = subprocess.run([args.caid, "check-config", "--env", probe], capture_output=True, text=True)
        streaming_known = "CAID_MOUNT_STREAMING" in cc.stdout and "not a setting" not in cc.stderr
        # (A caid older than the streaming mount would run both setups as download-then-mount: the figures say so.)
        if not streaming_known:
            log("this caid does not know CAID_MOUNT_STREAMING: caid-stream runs are download-then-mount too")
        biggest = max((os.path.join(d, f) for d, _, fs in os.walk(os.path.join(w["bucket"], PREFIX)) for f in fs),
                      key=os.path.getsize)
        big_key, big_size = os.path.relpath(biggest, w["bucket"]), os.path.getsize(biggest)
        rates = []
        # The unthrottled rate first, so that the throttle check knows each server's ceiling.
        for rate in sorted(args.rate, key=lambda r: r != 0):
            if rate == 0:
                rates.append({"rate": 0, "oss": ports["oss"], "s3": ports["moto"]})
            else:
                rates.append({"rate": rate, "oss": start_proxy(run, w, ports["oss"], rate * 1e6, "oss-%d" % rate),
                              "s3": start_proxy(run, w, ports["moto"], rate * 1e6, "moto-%d" % rate)})
        for r in rates:
            r["env_stream"] = caid_env(w, r["oss"], ports["kbs"], True, streaming_known)
            r["env_off"] = caid_env(w, r["oss"], ports["kbs"], False, streaming_known)
            # The rate each server path gives curl: one connection and 8 in parallel over one whole shard.
            c = {"oss_1": curl_rate(r["oss"], big_key, big_size, 1, True),
                 "oss_8": curl_rate(r["oss"], big_key, big_size, 8, True),
                 "moto_1": curl_rate(r["s3"], big_key, big_size, 1, False),
                 "moto_8": curl_rate(r["s3"], big_key, big_size, 8, False)}
            checks[r["rate"]] = c
            log("rate %s: curl MB/s %s" % (r["rate"] or "unthrottled",
                                           ", ".join("%s %.0f" % kv for kv in c.items())))
            if r["rate"]:
                # Against the rate asked for, or the server's own ceiling when that is lower (measured first when
                # the unthrottled rate is in the list).
                for k, v in c.items():
                    want = min(r["rate"], checks.get(0, {}).get(k, r["rate"]))
                    if abs(v - want) > 0.1 * want:
                        log("WARNING: %s gave %.0f MB/s through the throttle set to %d" % (k, v, r["rate"]))
        setups = [s for s in SETUPS if s in args.setups]
        for round_ in range(args.rounds):
            order = rates if round_ % 2 == 0 else rates[::-1]
            for r in order:
                for setup in (setups if round_ % 2 == 0 else setups[::-1]):
                    cpu_before = client_cpu()
                    if setup == "fetch":
                        out = run_fetch(w, args.caid, r["env_off"], args.timeout)
                    elif setup.startswith("caid"):
                        env = r["env_stream"] if setup == "caid-stream" else r["env_off"]
                        out = run_caid(run, w, args.caid, env, expected, args.timeout)
                    else:
                        out = run_s3fs(run, w, r["s3"], S3FS_OPTIONS[setup], password, expected, args.timeout)
                    cpu_after = client_cpu()
                    # How busy the client CPU was from the start of the setup to its stop (a little after the last
                    # byte): near 100 % means the clients had no CPU to spare for overlapping work.
                    out["client_busy"] = (cpu_after[0] - cpu_before[0]) / max(1, cpu_after[1] - cpu_before[1])
                    out.update(setup=setup, rate=r["rate"], round=round_ + 1)
                    results.append(out)
                    with open(os.path.join(work, "results.jsonl"), "a") as f:
                        f.write(json.dumps(out) + "\n")
                    log("round %d, %s, %s: %s" % (
                        round_ + 1, "unthrottled" if not r["rate"] else "%d MB/s" % r["rate"], setup,
                        ", ".join("%s %.2f s" % (k, out[k]) for k in ("key", "files", "first", "last")
                                  if out.get(k) is not None)))
                    for e in out.get("errors", []):
                        log("  ERROR: " + e)
                    for l in out.get("log_tail", []):
                        log("  | " + l)
    finally:
        run.close()
    return report(args, results, checks, total, streaming_known)


def versions(caid):
    def first_line(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception:
            return "?"
    import moto
    return {"caid": first_line([caid, "--version"]), "s3fs": first_line(["s3fs", "--version"]),
            "gocryptfs": first_line(["gocryptfs", "-version"]), "moto": moto.__version__}


def fmt(v):
    return "–" if v is None else "%.2f" % v


def report(args, results, checks, total, streaming_known):
    failed = [r for r in results if r.get("errors")]
    lines = []
    v = versions(args.caid)
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines.append("")
    lines.append("#### %s (%d cores, %s), %d MiB model, %d rounds" % (
        datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), os.cpu_count(), os.uname().release,
        args.size_mib, args.rounds))
    lines.append("")
    lines.append("Command: `%s` (script at %s); caid %s (`%s`), %s, %s, moto %s (objects in memory, range patch)." % (
        args.command, commit, v["caid"], args.caid_label, v["s3fs"].split(" with ")[0], v["gocryptfs"].split(";")[0],
        v["moto"]))
    lines.append("s3fs-tuned: `-o %s`." % S3FS_OPTIONS["s3fs-tuned"])
    if not streaming_known:
        lines.append("This caid does not know `CAID_MOUNT_STREAMING`: its caid-stream rows are download-then-mount too.")
    lines.append("")
    lines.append("CPUs: %s." % ("the servers and throttle proxies on CPU %s, the clients and the reader on CPU 0 (PIN=1: the server "
                                 "stands in for a remote OSS)" % SERVER_CPUS if PIN else "all processes share every CPU (PIN=0)"))
    lines.append("Seconds from start (medians of %d rounds); ciphertext %d bytes." % (args.rounds, total))
    lines.append("")
    lines.append("| rate | setup | key | files listed | first byte | last byte | last / download | MB/s to last byte | client CPU busy |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for rate in args.rate:
        label = "%d MB/s" % rate if rate else "unthrottled"
        fetch = median(r.get("last") for r in results if r["rate"] == rate and r["setup"] == "fetch" and not r.get("errors"))
        summary[rate] = {}
        for setup in [s for s in SETUPS if s in args.setups]:
            rs = [r for r in results if r["rate"] == rate and r["setup"] == setup and not r.get("errors")]
            if not rs:
                lines.append("| %s | %s | failed | | | | | | |" % (label, setup))
                continue
            m = {k: median(r.get(k) for r in rs) for k in ("key", "files", "first", "last", "client_busy")}
            summary[rate][setup] = m
            ratio = "%.2fx" % (m["last"] / fetch) if fetch and setup != "fetch" else ""
            name = "fetch (download alone)" if setup == "fetch" else setup
            busy = "%.0f %%" % (100 * m["client_busy"]) if PIN and m.get("client_busy") is not None else ""
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %.0f | %s |" % (
                label, name, fmt(m["key"]), fmt(m["files"]), fmt(m["first"]), fmt(m["last"]), ratio,
                total / m["last"] / 1e6, busy))
    lines.append("")
    # The targets of issue #18.
    for rate in args.rate:
        label = "%d MB/s" % rate if rate else "unthrottled"
        s = summary[rate]
        st, fetch = s.get("caid-stream"), s.get("fetch")
        if not st or not fetch:
            continue
        others = {k: s[k]["last"] for k in s if k not in ("fetch", "caid-stream")}
        verdicts = [
            "last byte %.2fx the download alone (target ≤ 1.1x): %s" % (st["last"] / fetch["last"], "met" if st["last"] <= 1.1 * fetch["last"] else "NOT met"),
            "first byte %.2f s after the key (target ≤ 1 s): %s" % (st["first"] - st["key"], "met" if st["first"] - st["key"] <= 1 else "NOT met"),
            "ahead of %s" % ", ".join("%s (%.2f s): %s" % (k, t, "yes" if st["last"] < t else "NO") for k, t in others.items()),
        ]
        lines.append("- %s, caid-stream%s: %s." % (
            label, "" if streaming_known else " (NOT streaming: this binary does not know the setting)", "; ".join(verdicts)))
    lines.append("")
    lines.append("Throttle check (curl, MB/s, GET of one %s shard: 1 connection / 8 parallel ranges):" % "ciphertext")
    for rate, c in checks.items():
        lines.append("%s: OSS test server %.0f / %.0f, moto %.0f / %.0f." % (
            "unthrottled (no proxy)" if not rate else "throttle at %d MB/s" % rate, c["oss_1"], c["oss_8"], c["moto_1"], c["moto_8"]))
    if failed:
        lines.append("")
        lines.append("%d runs failed and are left out of the medians: %s." % (
            len(failed), "; ".join("%s at %s round %d: %s" % (r["setup"], r["rate"] or "unthrottled", r["round"], r["errors"][0][:200]) for r in failed)))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.doc:
        with open(args.doc, "a") as f:
            f.write(text)
    with open(os.path.join(args.work, "summary.json"), "w") as f:
        json.dump({"summary": {str(k): v for k, v in summary.items()}, "checks": {str(k): v for k, v in checks.items()},
                   "results": results}, f, indent=1)
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--work", required=True)
    b.add_argument("--tmpfs", required=True)
    b.add_argument("--cache", required=True)
    b.add_argument("--caid", required=True)
    b.add_argument("--caid-label", default="")
    b.add_argument("--rate", type=int, action="append", help="MB/s (10^6 bytes); 0: unthrottled, no proxy")
    b.add_argument("--size-mib", type=int, default=1024)
    b.add_argument("--rounds", type=int, default=2)
    b.add_argument("--timeout", type=int, default=300)
    b.add_argument("--setups", default=",".join(SETUPS))
    b.add_argument("--doc")
    b.add_argument("--command", default="scripts/bench-startup.sh")
    m = sub.add_parser("moto")
    m.add_argument("--port-file", required=True)
    args = p.parse_args()
    if args.cmd == "moto":
        return moto_main(args)
    # SIGTERM (the shell's trap) unwinds like ^C, so that `finally` ends the children and unmounts.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    args.setups = args.setups.split(",")
    args.rate = args.rate or [200, 0]
    return bench(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; children ended, mounts unmounted")
        sys.exit(130)
