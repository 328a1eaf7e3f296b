#!/usr/bin/env python3
"""A proxy user for caid tunnel's tests. Modes:
  requests  --plan JSON: [{method, url, host, body_size, headers}] sent over ONE http.client connection to the proxy
            (a body goes in the same write as the head); prints JSON: status, body, headers, and the local port used.
  raw       --data TEXT: one write of TEXT (\\r\\n escapes allowed), then prints what comes back until EOF or --timeout.
  slow      --connect host:port --path P: CONNECT, GET P, reads the response with pauses; prints the byte count.
  cancel    --connect host:port --path P: CONNECT, GET P, reads a little, then resets the socket (SO_LINGER 0)."""
import argparse, http.client, json, socket, struct, sys, time

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("mode")
parser.add_argument("--proxy", type=int, required=True)
parser.add_argument("--plan")
parser.add_argument("--data")
parser.add_argument("--connect")
parser.add_argument("--path", default="/")
parser.add_argument("--timeout", type=float, default=20)
parser.add_argument("--pause", type=float, default=0.05)
args = parser.parse_args()


def connect_tunnel():
    s = socket.create_connection(("127.0.0.1", args.proxy), timeout=args.timeout)
    s.sendall(f"CONNECT {args.connect} HTTP/1.1\r\nHost: {args.connect}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = s.recv(1)
        if not data:
            sys.exit("proxy closed during CONNECT: " + head.decode(errors="replace"))
        head += data
    if b" 200 " not in head.split(b"\r\n")[0]:
        sys.exit("CONNECT refused: " + head.decode(errors="replace"))
    s.sendall(f"GET {args.path} HTTP/1.1\r\nHost: {args.connect}\r\nConnection: close\r\n\r\n".encode())
    return s


if args.mode == "requests":
    conn = http.client.HTTPConnection("127.0.0.1", args.proxy, timeout=args.timeout)
    out = []
    for item in json.loads(args.plan):
        headers = dict(item.get("headers", {}))
        if "host" in item:
            headers["Host"] = item["host"]
        body = b"x" * item["body_size"] if "body_size" in item else None
        conn.request(item.get("method", "GET"), item["url"], body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        out.append({"status": response.status, "body": data.decode(errors="replace"),
                    "headers": {k.lower(): v for k, v in response.getheaders()},
                    "local_port": conn.sock.getsockname()[1] if conn.sock else None})
    print(json.dumps(out))
elif args.mode == "raw":
    s = socket.create_connection(("127.0.0.1", args.proxy), timeout=args.timeout)
    s.sendall(args.data.encode().decode("unicode_escape").encode("latin-1"))
    got = b""
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
            got += data
    except socket.timeout:
        pass
    print(got.decode(errors="replace"))
elif args.mode == "slow":
    s = connect_tunnel()
    total, started = 0, time.time()
    while True:
        data = s.recv(1 << 20)
        if not data:
            break
        total += len(data)
        if total // (8 << 20) != (total - len(data)) // (8 << 20):
            time.sleep(args.pause)
    print(json.dumps({"bytes": total, "seconds": time.time() - started}))
elif args.mode == "cancel":
    s = connect_tunnel()
    s.recv(4096)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    print(json.dumps({"cancelled_at": time.time()}))
