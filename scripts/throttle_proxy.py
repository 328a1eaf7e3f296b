#!/usr/bin/env python3
"""A TCP proxy on loopback that limits the bytes it sends back to clients to one rate for all connections together.

The benchmarks put it in front of every object server (Tests/peers/oss_server.py, moto) so that one mechanism throttles
every setup alike: a token bucket shared by all connections, refilled at --rate bytes per second, charged for every
byte from the server to a client (response headers and bodies; the headers are a rounding error next to the bodies).
Requests from clients to the server pass unthrottled. Waiters are served in arrival order (one lock), so parallel
connections share the rate fairly rather than the fastest one taking it all.

Usage: throttle_proxy.py --upstream PORT --rate BYTES_PER_SEC [--port P] [--port-file F]
"""
import argparse, asyncio, os, time

CHUNK = 256 << 10  # bytes read from the server at a time: small enough for fair sharing, large enough for speed


class TokenBucket:
    def __init__(self, rate, burst):
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.stamp = self.burst, time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n):
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)


async def pump(reader, writer, bucket):
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            if bucket:
                await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            writer.close()


async def serve(args):
    # A burst of 1/50 s of the rate (at least one chunk): the rate holds over any window longer than that.
    bucket = TokenBucket(args.rate, max(CHUNK, args.rate / 50))

    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.wait_for(
                asyncio.open_connection(args.upstream_host, args.upstream), timeout=10)
        except (OSError, asyncio.TimeoutError):
            client_writer.close()
            return
        await asyncio.gather(pump(client_reader, server_writer, None), pump(server_reader, client_writer, bucket))
        for w in (client_writer, server_writer):
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", args.port, limit=CHUNK)
    port = server.sockets[0].getsockname()[1]
    print("listening %d" % port, flush=True)
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.rename(tmp, args.port_file)
    async with server:
        await server.serve_forever()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--upstream", type=int, required=True, help="the server's port on --upstream-host")
    p.add_argument("--upstream-host", default="127.0.0.1")
    p.add_argument("--rate", type=float, required=True, help="bytes per second, all connections together")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    asyncio.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
