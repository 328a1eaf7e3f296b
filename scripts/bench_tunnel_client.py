#!/usr/bin/env python3
"""Measurements for scripts/bench-tunnel.sh, printed as JSON.
  latency  --url U [--proxy P] --count N: N sequential GETs on one kept-alive connection; p50/p99 in microseconds.
  stream   --url U [--proxy P] --streams S: S concurrent streamed responses whose chunks carry the server's send
           time; p50/p99 of (receive time - send time) over every chunk, in microseconds."""
import argparse, json, socket, statistics, threading, time
from urllib.parse import urlparse

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("mode")
parser.add_argument("--url", required=True)
parser.add_argument("--proxy", type=int)
parser.add_argument("--count", type=int, default=2000)
parser.add_argument("--streams", type=int, default=100)
args = parser.parse_args()
url = urlparse(args.url)
target = (url.hostname, url.port or 80)


def open_socket():
    s = socket.create_connection(("127.0.0.1", args.proxy) if args.proxy else target, timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def request_line():
    path = url.path + ("?" + url.query if url.query else "")
    return (args.url if args.proxy else path), f"{url.hostname}:{target[1]}"


def read_response(f):
    """Reads one response (Content-Length or chunked) from file f; returns the body, calls on_chunk per chunk."""
    status = f.readline()
    if not status:
        raise EOFError("connection closed")
    length, chunked = None, False
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
        if name.lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if not chunked:
        return [f.read(length or 0)]
    chunks = []
    while True:
        size = int(f.readline().split(b";")[0], 16)
        if size == 0:
            f.readline()
            return chunks
        chunks.append((f.read(size), time.time()))
        f.readline()


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


if args.mode == "latency":
    s = open_socket()
    f = s.makefile("rb")
    line, host = request_line()
    request = f"GET {line} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    samples = []
    for i in range(args.count + 50):
        started = time.perf_counter()
        s.sendall(request)
        read_response(f)
        if i >= 50:  # warm-up
            samples.append((time.perf_counter() - started) * 1e6)
    print(json.dumps({"p50_us": statistics.median(samples), "p99_us": percentile(samples, 99)}))
elif args.mode == "stream":
    delays, errors = [], []
    lock = threading.Lock()

    def one():
        try:
            s = open_socket()
            f = s.makefile("rb")
            line, host = request_line()
            s.sendall(f"GET {line} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            mine = []
            for data, received in read_response(f):
                sent = float(data.split()[2])
                mine.append((received - sent) * 1e6)
            with lock:
                delays.extend(mine)
        except Exception as e:  # noqa: BLE001 - reported in the JSON
            with lock:
                errors.append(repr(e))

    threads = [threading.Thread(target=one) for _ in range(args.streams)]
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"chunks": len(delays), "errors": errors[:3], "p50_us": statistics.median(delays) if delays else None,
                      "p99_us": percentile(delays, 99) if delays else None, "seconds": time.time() - started}))
