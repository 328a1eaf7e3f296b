#!/usr/bin/env python3
"""The stand-in for the inference service: serves a directory over HTTP/1.1 on loopback (or --host), closing each
connection after its response. Writes its port to --port-file."""
import argparse, functools, os
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from peerutil import announce_port

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
announce_port(args.port_file, server.server_address[1])
server.serve_forever()
