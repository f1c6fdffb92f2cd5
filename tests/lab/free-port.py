#!/usr/bin/env python3
"""Prints a free TCP port on 127.0.0.1 below the kernel's ephemeral range (the same rule as
kirt::util::free_loopback_port): a port from that range can be taken, between choosing it and the
server binding it, as the source port of any outgoing connection. With a FILE, ports listed in it
are skipped and the chosen one is appended (so one lab never hands out a port twice)."""
import random
import socket
import sys

try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
except (OSError, ValueError, IndexError):
    low = 32768
given = set()
if len(sys.argv) > 1:
    try:
        with open(sys.argv[1]) as f:
            given = set(f.read().split())
    except OSError:
        pass
for _ in range(500):
    port = random.randrange(10000, max(low, 10001))
    if str(port) in given:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    if len(sys.argv) > 1:
        with open(sys.argv[1], "a") as f:
            f.write(f"{port}\n")
    print(port)
    sys.exit(0)
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
