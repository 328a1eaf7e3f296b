"""Helpers the test peers share. Importing it also ties the peer's life to its parent's (below)."""
import os, threading, time


def announce_port(path, port):
    """Writes the port a peer listens on to `path` atomically: the test reads it only once it is complete."""
    with open(path + ".tmp", "w") as f:
        f.write(str(port))
    os.rename(path + ".tmp", path)


def _outlive_nobody():
    """A peer ends when the test process that started it ends, even when the test had no time to stop it (a test
    process exits right after its last test), and it lets go of inherited lock files (the build lock a `flock swift
    test` holds), so that a peer left behind cannot block the next build."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + name).endswith(".lock"):
                os.close(int(name))
        except OSError:
            pass
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


_outlive_nobody()
