"""Helpers the test peers share."""
import os


def announce_port(path, port):
    """Writes the port a peer listens on to `path` atomically: the test reads it only once it is complete."""
    with open(path + ".tmp", "w") as f:
        f.write(str(port))
    os.rename(path + ".tmp", path)
