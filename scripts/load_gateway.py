#!/usr/bin/env python3
"""The load generator of scripts/load-gateway.sh (issue #16): strangers and tunnels against a running `caid run`,
on loopback only, bounded in count and time. Independent of caid: Python ssl (OpenSSL) and h2.

  echo --port P            the stand-in service: a TCP echo server that keeps every connection open
  load --gateway-port G --caid-pid PID --caid BIN --health-socket S [--idle N] [--stalled N] [--streams N ...]

`load` measures caid's descriptors (/proc/PID/fd) and resident memory (VmRSS) at baseline, under load and after,
runs `caid health` every half second throughout, and prints one JSON report. Phases:
  1. from 127.0.0.1: N TLS connections that complete the handshake (ALPN h2) and then stay silent, and N
     connections that send half a ClientHello and stall; meanwhile a client from 127.0.0.2 tunnels.
  2. for each --streams N: N concurrent CONNECT streams (200 per connection, from 127.0.0.3), each echoing 16 bytes
     and held open until all have answered; counts served, refused (RST_STREAM REFUSED_STREAM) and failed.
  3. everything closed: waits for the descriptor count to come back to the baseline.
"""
import argparse, asyncio, json, os, ssl, sys, time

import h2.config, h2.connection, h2.events, h2.exceptions, h2.settings

REFUSED_STREAM = 7


def fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tls_context():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # attestation is not what this load measures; GatewayInteropTests check it
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["h2"])
    return context


class Connection:
    """One HTTP/2 client connection carrying CONNECT streams to the echo service."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.streams = {}
        self.settings = asyncio.Event()
        self.closed = False
        self.writer.write(self.h2.data_to_send())
        self.pump_task = asyncio.ensure_future(self.pump())

    @classmethod
    async def open(cls, port, source, timeout=30):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, ssl=tls_context(), server_hostname="tng.internal", local_addr=(source, 0)), timeout)
        connection = cls(reader, writer)
        await asyncio.wait_for(connection.settings.wait(), timeout)
        return connection

    async def pump(self):
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for event in self.h2.receive_data(data):
                    stream = self.streams.get(getattr(event, "stream_id", None))
                    if isinstance(event, h2.events.RemoteSettingsChanged):
                        self.settings.set()
                    elif isinstance(event, h2.events.ResponseReceived) and stream:
                        stream["status"] = dict(event.headers)[":status"]
                        stream["event"].set()
                    elif isinstance(event, h2.events.DataReceived) and stream:
                        stream["data"] += event.data
                        self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        stream["event"].set()
                    elif isinstance(event, h2.events.StreamReset) and stream:
                        stream["reset"] = int(event.error_code)
                        stream["event"].set()
                    elif isinstance(event, h2.events.StreamEnded) and stream:
                        stream["ended"] = True
                        stream["event"].set()
                self.writer.write(self.h2.data_to_send())
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        self.closed = True
        for stream in self.streams.values():
            stream["event"].set()

    async def wait(self, stream, condition, timeout):
        deadline = time.monotonic() + timeout
        while not condition() and stream.get("reset") is None and not self.closed:
            stream["event"].clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(stream["event"].wait(), left)
            except asyncio.TimeoutError:
                return False
        return condition()

    async def echo(self, payload, release, timeout=60):
        """Opens a CONNECT stream, sends `payload`, waits for it back, then holds the stream until `release`."""
        stream_id = self.h2.get_next_available_stream_id()
        stream = {"status": None, "data": b"", "reset": None, "ended": False, "event": asyncio.Event()}
        self.streams[stream_id] = stream
        self.h2.send_headers(stream_id, [(":method", "CONNECT"), (":authority", "tng.internal")])
        self.writer.write(self.h2.data_to_send())
        if not await self.wait(stream, lambda: stream["status"] is not None, timeout):
            return "refused" if stream["reset"] == REFUSED_STREAM else "failed"
        if stream["status"] != "200":
            return "failed"
        self.h2.send_data(stream_id, payload)
        self.writer.write(self.h2.data_to_send())
        if not await self.wait(stream, lambda: len(stream["data"]) >= len(payload), timeout) or stream["data"] != payload:
            return "failed"
        await release.wait()
        if not self.closed:
            try:
                self.h2.end_stream(stream_id)
                self.writer.write(self.h2.data_to_send())
            except h2.exceptions.ProtocolError:
                pass
        return "served"

    def close(self):
        self.pump_task.cancel()
        self.writer.close()


async def echo_server(port):
    async def handle(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


class Prober:
    """`caid health` every half second: how many answered, how many did not, the slowest answer."""

    def __init__(self, caid, socket_path):
        self.command = [caid, "health", "--socket", socket_path]
        self.answered, self.failed, self.slowest, self.last = 0, 0, 0.0, ""
        self.task = asyncio.ensure_future(self.run())

    async def probe(self):
        start = time.monotonic()
        process = await asyncio.create_subprocess_exec(*self.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, _ = await asyncio.wait_for(process.communicate(), 5)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
            return False, ""
        self.slowest = max(self.slowest, time.monotonic() - start)
        return process.returncode == 0, out.decode(errors="replace")

    async def run(self):
        while True:
            ok, text = await self.probe()
            if ok:
                self.answered += 1
                self.last = text
            else:
                self.failed += 1
            await asyncio.sleep(0.5)

    @staticmethod
    def gateway_line(text):
        line = next((line for line in text.splitlines() if "streams" in line and "connections" in line), "")
        return line.split("; ")[-2:] if line else ""

    async def fresh_line(self):
        """The gateway's budget as `caid health` shows it now."""
        ok, text = await self.probe()
        return self.gateway_line(text) if ok else "caid health did not answer"

    def report(self):
        return {"answered": self.answered, "failed": self.failed, "slowest_s": round(self.slowest, 3)}


async def tunnel_once(port, source):
    start = time.monotonic()
    try:
        connection = await Connection.open(port, source)
    except (OSError, ssl.SSLError, asyncio.TimeoutError) as error:
        return {"result": "failed", "error": str(error)}
    release = asyncio.Event()
    release.set()
    result = await connection.echo(b"second source\n", release, timeout=30)
    connection.close()
    return {"result": result, "seconds": round(time.monotonic() - start, 3)}


async def strangers(port, idle, stalled):
    """Phase 1's connections from 127.0.0.1. Returns what became of them and the open sockets to close later."""
    held, counts = [], {"idle_established": 0, "idle_refused": 0, "stalled_open": 0, "stalled_refused": 0}
    gate = asyncio.Semaphore(64)

    async def one_idle():
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", port, ssl=tls_context(), server_hostname="tng.internal", local_addr=("127.0.0.1", 0)), 30)
                held.append((reader, writer))
                counts["idle_established"] += 1
            except (OSError, ssl.SSLError, asyncio.TimeoutError):
                counts["idle_refused"] += 1

    async def one_stalled():
        async with gate:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.1", 0))
                writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # half a ClientHello record
                await writer.drain()
                held.append((reader, writer))
                counts["stalled_open"] += 1
            except OSError:
                counts["stalled_refused"] += 1

    await asyncio.gather(*[one_idle() for _ in range(idle)], *[one_stalled() for _ in range(stalled)])
    # A connection caid refused is closed at once; one it took stays. Tell them apart after a moment.
    await asyncio.sleep(1)
    alive = [w for r, w in held if not r.at_eof()]
    return counts, held, alive


async def streams_phase(port, count, pid, prober, per_connection=200):
    release = asyncio.Event()
    connections = []
    for _ in range((count + per_connection - 1) // per_connection):
        connections.append(await Connection.open(port, "127.0.0.3"))
    tasks = []
    for index in range(count):
        connection = connections[index // per_connection]
        tasks.append(asyncio.ensure_future(connection.echo(b"%015d\n" % index, release)))
    # Every stream has answered (served streams wait on `release`, the others are done).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        opened = sum(len(c.streams) for c in connections)
        waiting = sum(1 for c in connections for s in c.streams.values() if s["reset"] is None and len(s["data"]) < 16 and not c.closed)
        if opened == count and waiting == 0:
            break
        await asyncio.sleep(0.2)
    peak_fds, peak_rss = fds(pid), rss_kib(pid)
    health = await prober.fresh_line()
    release.set()
    results = await asyncio.gather(*tasks)
    for connection in connections:
        connection.close()
    return {
        "streams": count, "served": results.count("served"), "refused": results.count("refused"),
        "failed": results.count("failed"), "caid_fds_at_peak": peak_fds, "caid_rss_mib_at_peak": round(peak_rss / 1024, 1),
        "health_at_peak": health,
    }


async def settle(pid, baseline, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and fds(pid) > baseline:
        await asyncio.sleep(0.5)
    return fds(pid)


async def load(args):
    pid = args.caid_pid
    limit = int(open("/proc/%d/limits" % pid).read().split("Max open files")[1].split()[0])
    report = {"caid_descriptor_limit": limit, "baseline": {"fds": fds(pid), "rss_mib": round(rss_kib(pid) / 1024, 1)}}
    prober = Prober(args.caid, args.health_socket)
    await asyncio.sleep(1)

    start = time.monotonic()
    counts, held, alive = await strangers(args.gateway_port, args.idle, args.stalled)
    under = {"fds": fds(pid), "rss_mib": round(rss_kib(pid) / 1024, 1), "health": await prober.fresh_line()}
    second = await tunnel_once(args.gateway_port, "127.0.0.2")
    report["strangers"] = dict(counts, still_open_at_client=len(alive), caid_under_load=under, second_source_tunnel=second,
                               seconds=round(time.monotonic() - start, 1))
    for _, writer in held:
        writer.close()
    await settle(pid, report["baseline"]["fds"], timeout=15)

    report["streams"] = []
    for round_number in range(args.rounds):
        for count in args.streams:
            phase = await streams_phase(args.gateway_port, count, pid, prober)
            phase["round"] = round_number + 1
            phase["fds_after"] = await settle(pid, report["baseline"]["fds"], timeout=30)
            phase["rss_mib_after"] = round(rss_kib(pid) / 1024, 1)
            report["streams"].append(phase)

    after_fds = await settle(pid, report["baseline"]["fds"])
    await asyncio.sleep(args.settle)
    report["after"] = {"fds": fds(pid), "rss_mib": round(rss_kib(pid) / 1024, 1), "seconds_after_load": args.settle}
    report["after"]["fds_at_first_settle"] = after_fds
    report["after"]["health"] = await prober.fresh_line()
    prober.task.cancel()
    report["health"] = prober.report()
    print(json.dumps(report, indent=2))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    echo = sub.add_parser("echo")
    echo.add_argument("--port", type=int, required=True)
    run = sub.add_parser("load")
    run.add_argument("--gateway-port", type=int, required=True)
    run.add_argument("--caid-pid", type=int, required=True)
    run.add_argument("--caid", required=True)
    run.add_argument("--health-socket", required=True)
    run.add_argument("--idle", type=int, default=1000)
    run.add_argument("--stalled", type=int, default=256)
    run.add_argument("--streams", type=int, nargs="*", default=[2000])
    run.add_argument("--rounds", type=int, default=1, help="repeat the stream phases (memory that keeps growing is a leak)")
    run.add_argument("--settle", type=float, default=10, help="seconds to wait after the load before the last figures")
    args = parser.parse_args()
    if args.command == "echo":
        asyncio.run(echo_server(args.port))
    else:
        asyncio.run(asyncio.wait_for(load(args), 600))


if __name__ == "__main__":
    sys.exit(main())
