"""A node address for hostPort tests that does not depend on the machine's network: a link of
this test process's own (``nlt-`` named, a TEST-NET-1 /32; a veth pair, as the kernel may lack
the dummy driver), made on first use and deleted when the process exits. Packets to it are
local, exactly as to a NIC's address."""

from __future__ import annotations

import atexit
import functools
import os
import subprocess


@functools.cache
def node_address() -> str:
    link = f"nlt-node{os.getpid() % 100000}"
    address = f"192.0.2.{os.getpid() % 200 + 20}"
    peer = f"{link}p"
    subprocess.run(["ip", "link", "add", link, "type", "veth", "peer", "name", peer], check=True)
    atexit.register(subprocess.run, ["ip", "link", "del", link], check=False)
    subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", link], check=True)
    subprocess.run(["ip", "link", "set", link, "up"], check=True)
    subprocess.run(["ip", "link", "set", peer, "up"], check=True)
    return address
