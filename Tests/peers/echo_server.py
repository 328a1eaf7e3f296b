#!/usr/bin/env python3
"""The stand-in service for caid tunnel's HTTP tests, HTTP/1.1 with keep-alive: POST answers with the body's length
and SHA-256; GET /stream?chunks=N&delay=S sends N chunked lines S seconds apart; GET /hold keeps sending until the
client goes away, then writes 'closed' to --events (and sends each event as a datagram to the unix socket
--notify, when given, for tests that wait for it). Writes its port to --port-file."""
import argparse, hashlib, socket, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs
from peerutil import announce_port

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--port-file", required=True)
parser.add_argument("--events", required=True)
parser.add_argument("--notify")
args = parser.parse_args()


def event(text):
    with open(args.events, "a") as f:
        f.write(text + "\n")
    if args.notify:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(text.encode(), args.notify)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def reply(self, body, status=200):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        digest, left = hashlib.sha256(), length
        while left > 0:
            data = self.rfile.read(min(left, 1 << 16))
            if not data:
                break
            digest.update(data)
            left -= len(data)
        forwarded = self.headers.get("X-Tng-Http-Forward", "")
        self.reply(f"{length - left} {digest.hexdigest()} forwarded={forwarded} path={self.path}\n".encode())

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path == "/stream":
            chunks, delay = int(query.get("chunks", ["10"])[0]), float(query.get("delay", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(chunks):
                line = f"data: {i} {time.time()}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
                if delay:
                    time.sleep(delay)
            self.wfile.write(b"0\r\n\r\n")
        elif url.path == "/hold":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            event("opened")
            try:
                while True:
                    self.wfile.write(b"x" * 1024)
                    self.wfile.flush()
                    time.sleep(0.01)
            except OSError:
                event("closed")
        else:
            self.reply(f"path={url.path} forwarded={self.headers.get('X-Tng-Http-Forward', '')}\n".encode())


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
server.daemon_threads = True
announce_port(args.port_file, server.server_address[1])
server.serve_forever()
