#!/usr/bin/env python3
"""The stand-in for the inference service: serves a directory over HTTP/1.1 on loopback (or --host), closing each
connection after its response. Writes its port to --port-file."""
import argparse, functools, os
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--root", required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--port-file", required=True)
args = parser.parse_args()


class Handler(SimpleHTTPRequestHandler):
    def log_message(self, *_):
        pass


server = ThreadingHTTPServer((args.host, args.port), functools.partial(Handler, directory=args.root))
server.daemon_threads = True
with open(args.port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(args.port_file + ".tmp", args.port_file)
server.serve_forever()
