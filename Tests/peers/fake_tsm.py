#!/usr/bin/env python3
"""A fake configfs-tsm tree (Linux drivers/virt/coco/tsm.c semantics) plus the TDX guest's RTMR sysfs files, as one
FUSE file system, for caid's TDX attester tests.

Now also (issue #20): `<mount>/measurements/rtmr{0,1,2,3}:sha384`, the files mainline Linux >= 6.16 has under
/sys/devices/virtual/misc/tdx_guest/measurements (torvalds/linux Documentation/ABI/testing/
sysfs-devices-virtual-misc-tdx_guest @ae5ec8ad; drivers/virt/coco/guest/tsm-mr.c `tm_digest_read`/`tm_digest_write`
@2fbe8203): mode 0644; a read gives the current 48 raw bytes; one write of exactly 48 bytes at offset 0 extends the
register, new = SHA384(old || data) (the TDG.MR.RTMR.EXTEND rule); any other size or offset fails with EINVAL.
The quotes it makes carry RTMR0..3 in the TD report body (offsets 328/376/424/472 after the 48-byte header,
48 bytes each; REPORTDATA stays at body offset 520). `--rtmr3-extend HEX` (repeatable) extends RTMR3 at start, as
another agent would have before caid starts. `--ccel FILE` extends RTMR0..3 at start from the CC-MR index 1..4
records of a CC event log (the firmware's extends), so that a verifier's replay of that log matches the quote.
The --stats JSON counts the extends made through the files: "extends": {"0": n, "1": n, "2": n, "3": n}.

  <mount>/report/            mkdir creates a report entry; rmdir removes it
  <entry>/provider           read-only, "tdx_guest\\n" (or --provider)
  <entry>/inblob             write-only, up to 64 bytes of report data; each write bumps generation
  <entry>/outblob            read-only, a TDX v4 quote whose REPORTDATA (offset 568) is the inblob, zero-padded
  <entry>/generation         read-only, the number of writes to inblob
  <entry>/auxblob            read-only, empty

--race N makes the first N entries look raced: each inblob write bumps generation by 2, as if another writer had
written in between. Statistics (entries made, entries left) are written to --stats on every change.
"""
import argparse, errno, hashlib, json, os, stat, struct, sys, threading, time
from fuse import FUSE, FuseOSError, Operations

QUOTE_HEADER = (4).to_bytes(2, "little") + (2).to_bytes(2, "little") + (0x81).to_bytes(4, "little") + bytes(40)


RTMR_FILES = {"rtmr%d:sha384" % i: i for i in range(4)}


def quote(report_data, rtmrs):
    body = bytearray(584)
    for index, value in enumerate(rtmrs):
        body[328 + 48 * index:376 + 48 * index] = value
    body[520:584] = report_data.ljust(64, b"\0")
    signature = b"fake-ecdsa-signature-and-certification-data"
    return QUOTE_HEADER + bytes(body) + len(signature).to_bytes(4, "little") + signature


class TSM(Operations):
    def __init__(self, provider, race, stats, rtmrs):
        self.provider = provider.encode() + b"\n"
        self.rtmrs = rtmrs
        self.extends = [0, 0, 0, 0]
        self.race = race
        self.stats_path = stats
        self.entries = {}
        self.made = 0
        self.mutex = threading.Lock()
        self.now = time.time()

    def save(self):
        if self.stats_path:
            with open(self.stats_path + ".tmp", "w") as f:
                json.dump({"made": self.made, "left": sorted(self.entries),
                           "extends": {str(i): n for i, n in enumerate(self.extends)}}, f)
            os.rename(self.stats_path + ".tmp", self.stats_path)

    def split(self, path):
        parts = [p for p in path.split("/") if p]
        return parts

    def attr(self, mode, size=0):
        return {"st_mode": mode, "st_nlink": 2 if stat.S_ISDIR(mode) else 1, "st_size": size,
                "st_ctime": self.now, "st_mtime": self.now, "st_atime": self.now, "st_uid": 0, "st_gid": 0}

    def content(self, entry, name):
        if name == "provider":
            return self.provider
        if name == "outblob":
            return quote(entry["inblob"], self.rtmrs)
        if name == "generation":
            return b"%d\n" % entry["generation"]
        if name == "auxblob":
            return b""
        raise FuseOSError(errno.ENOENT)

    def getattr(self, path, fh=None):
        parts = self.split(path)
        with self.mutex:
            if len(parts) == 0 or parts == ["report"] or parts == ["measurements"]:
                return self.attr(stat.S_IFDIR | 0o755)
            if len(parts) == 2 and parts[0] == "measurements" and parts[1] in RTMR_FILES:
                return self.attr(stat.S_IFREG | 0o644, 48)
            if len(parts) >= 2 and parts[0] == "report" and parts[1] in self.entries:
                entry = self.entries[parts[1]]
                if len(parts) == 2:
                    return self.attr(stat.S_IFDIR | 0o755)
                if len(parts) == 3:
                    if parts[2] == "inblob":
                        return self.attr(stat.S_IFREG | 0o200)
                    if parts[2] in ("provider", "outblob", "generation", "auxblob"):
                        return self.attr(stat.S_IFREG | 0o444, len(self.content(entry, parts[2])))
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        parts = self.split(path)
        if not parts:
            return [".", "..", "report", "measurements"]
        if parts == ["measurements"]:
            return [".", ".."] + list(RTMR_FILES)
        if parts == ["report"]:
            with self.mutex:
                return [".", ".."] + list(self.entries)
        return [".", "..", "provider", "inblob", "outblob", "generation", "auxblob"]

    def mkdir(self, path, mode):
        parts = self.split(path)
        if len(parts) != 2 or parts[0] != "report":
            raise FuseOSError(errno.EPERM)
        with self.mutex:
            if parts[1] in self.entries:
                raise FuseOSError(errno.EEXIST)
            self.made += 1
            self.entries[parts[1]] = {"inblob": b"", "generation": 0, "step": 2 if self.made <= self.race else 1}
            self.save()

    def rmdir(self, path):
        parts = self.split(path)
        with self.mutex:
            if len(parts) != 2 or parts[1] not in self.entries:
                raise FuseOSError(errno.ENOENT)
            del self.entries[parts[1]]
            self.save()

    def open(self, path, flags):
        self.getattr(path)
        return 0

    def truncate(self, path, length, fh=None):
        return 0

    def read(self, path, size, offset, fh):
        parts = self.split(path)
        with self.mutex:
            if len(parts) == 2 and parts[0] == "measurements" and parts[1] in RTMR_FILES:
                return self.rtmrs[RTMR_FILES[parts[1]]][offset:offset + size]
            entry = self.entries.get(parts[1]) if len(parts) == 3 else None
            if entry is None or parts[2] == "inblob":
                raise FuseOSError(errno.EACCES)
            return self.content(entry, parts[2])[offset:offset + size]

    def write(self, path, data, offset, fh):
        parts = self.split(path)
        with self.mutex:
            if len(parts) == 2 and parts[0] == "measurements" and parts[1] in RTMR_FILES:
                # tsm-mr.c tm_digest_write: `if (off != 0 || count != attr->size) return -EINVAL;`
                if offset != 0 or len(data) != 48:
                    raise FuseOSError(errno.EINVAL)
                index = RTMR_FILES[parts[1]]
                self.rtmrs[index] = hashlib.sha384(self.rtmrs[index] + bytes(data)).digest()
                self.extends[index] += 1
                self.save()
                return 48
            entry = self.entries.get(parts[1]) if len(parts) == 3 else None
            if entry is None or parts[2] != "inblob":
                raise FuseOSError(errno.EACCES)
            if offset + len(data) > 64:
                raise FuseOSError(errno.EINVAL)
            entry["inblob"] = (entry["inblob"][:offset] + data)[:64]
            entry["generation"] += entry["step"]
            return len(data)


def ccel_extends(log):
    """(RTMR number, SHA-384 digest) for each CC-MR 1..4 record of a TCG2 CC event log: a SHA1-format first event
    (the spec-ID event carries the digest sizes), then TCG_PCR_EVENT2 records until a u64 of all ones or zeros
    (TCG PC Client PFP; the layout confidential-containers/trustee deps/eventlog/src/lib.rs v0.17.0 parses)."""
    sizes, offset = {}, 0
    _, kind = struct.unpack_from("<II", log, 0)
    offset = 8 + 20
    (size,) = struct.unpack_from("<I", log, offset)
    offset += 4
    if kind == 3:
        spec = log[offset:offset + size]
        (count,) = struct.unpack_from("<I", spec, 24)
        for i in range(count):
            alg, length = struct.unpack_from("<HH", spec, 28 + 4 * i)
            sizes[alg] = length
        offset += size
    out = []
    while offset + 8 <= len(log):
        if log[offset:offset + 8] in (b"\xff" * 8, bytes(8)):
            break
        index, _, count = struct.unpack_from("<III", log, offset)
        offset += 12
        for _ in range(count):
            (alg,) = struct.unpack_from("<H", log, offset)
            digest = log[offset + 2:offset + 2 + sizes[alg]]
            offset += 2 + sizes[alg]
            if alg == 0x0C and 1 <= index <= 4:
                out.append((index - 1, digest))
        (size,) = struct.unpack_from("<I", log, offset)
        offset += 4 + size
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mountpoint")
    parser.add_argument("--provider", default="tdx_guest")
    parser.add_argument("--race", type=int, default=0)
    parser.add_argument("--stats")
    parser.add_argument("--rtmr3-extend", action="append", default=[], metavar="HEX",
                        help="extend RTMR3 with these 48 bytes (96 hex digits) at start; repeatable, in order")
    parser.add_argument("--ccel", metavar="FILE", help="extend RTMR0..3 at start from this CC event log's records")
    args = parser.parse_args()
    rtmrs = [bytes(48)] * 4
    if args.ccel:
        with open(args.ccel, "rb") as f:
            for index, digest in ccel_extends(f.read()):
                rtmrs[index] = hashlib.sha384(rtmrs[index] + digest).digest()
    for text in args.rtmr3_extend:
        data = bytes.fromhex(text)
        if len(data) != 48:
            parser.error("--rtmr3-extend takes 48 bytes (96 hex digits), got %d" % len(data))
        rtmrs[3] = hashlib.sha384(rtmrs[3] + data).digest()
    tsm = TSM(args.provider, args.race, args.stats, rtmrs)
    tsm.save()
    # direct_io: reads must reach us every time (outblob and generation change), as in configfs.
    FUSE(tsm, args.mountpoint, foreground=True, nothreads=False, direct_io=True, fsname="faketsm")


if __name__ == "__main__":
    main()
