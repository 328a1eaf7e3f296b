#!/usr/bin/env python3
"""A fake configfs-tsm tree (Linux drivers/virt/coco/tsm.c semantics) as a FUSE file system, for caid's TDX
attester tests.

  <mount>/report/            mkdir creates a report entry; rmdir removes it
  <entry>/provider           read-only, "tdx_guest\\n" (or --provider)
  <entry>/inblob             write-only, up to 64 bytes of report data; each write bumps generation
  <entry>/outblob            read-only, a TDX v4 quote whose REPORTDATA (offset 568) is the inblob, zero-padded
  <entry>/generation         read-only, the number of writes to inblob
  <entry>/auxblob            read-only, empty

--race N makes the first N entries look raced: each inblob write bumps generation by 2, as if another writer had
written in between. Statistics (entries made, entries left) are written to --stats on every change.
"""
import argparse, errno, json, os, stat, sys, threading, time
from fuse import FUSE, FuseOSError, Operations

QUOTE_HEADER = (4).to_bytes(2, "little") + (2).to_bytes(2, "little") + (0x81).to_bytes(4, "little") + bytes(40)


def quote(report_data):
    body = bytearray(584)
    body[520:584] = report_data.ljust(64, b"\0")
    signature = b"fake-ecdsa-signature-and-certification-data"
    return QUOTE_HEADER + bytes(body) + len(signature).to_bytes(4, "little") + signature


class TSM(Operations):
    def __init__(self, provider, race, stats):
        self.provider = provider.encode() + b"\n"
        self.race = race
        self.stats_path = stats
        self.entries = {}
        self.made = 0
        self.mutex = threading.Lock()
        self.now = time.time()

    def save(self):
        if self.stats_path:
            with open(self.stats_path + ".tmp", "w") as f:
                json.dump({"made": self.made, "left": sorted(self.entries)}, f)
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
            return quote(entry["inblob"])
        if name == "generation":
            return b"%d\n" % entry["generation"]
        if name == "auxblob":
            return b""
        raise FuseOSError(errno.ENOENT)

    def getattr(self, path, fh=None):
        parts = self.split(path)
        with self.mutex:
            if len(parts) == 0 or parts == ["report"]:
                return self.attr(stat.S_IFDIR | 0o755)
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
            return [".", "..", "report"]
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
            entry = self.entries.get(parts[1]) if len(parts) == 3 else None
            if entry is None or parts[2] == "inblob":
                raise FuseOSError(errno.EACCES)
            return self.content(entry, parts[2])[offset:offset + size]

    def write(self, path, data, offset, fh):
        parts = self.split(path)
        with self.mutex:
            entry = self.entries.get(parts[1]) if len(parts) == 3 else None
            if entry is None or parts[2] != "inblob":
                raise FuseOSError(errno.EACCES)
            if offset + len(data) > 64:
                raise FuseOSError(errno.EINVAL)
            entry["inblob"] = (entry["inblob"][:offset] + data)[:64]
            entry["generation"] += entry["step"]
            return len(data)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mountpoint")
    parser.add_argument("--provider", default="tdx_guest")
    parser.add_argument("--race", type=int, default=0)
    parser.add_argument("--stats")
    args = parser.parse_args()
    tsm = TSM(args.provider, args.race, args.stats)
    tsm.save()
    # direct_io: reads must reach us every time (outblob and generation change), as in configfs.
    FUSE(tsm, args.mountpoint, foreground=True, nothreads=False, direct_io=True, fsname="faketsm")


if __name__ == "__main__":
    main()
