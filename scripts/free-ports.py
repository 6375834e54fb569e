#!/usr/bin/env python3
"""Prints the first of COUNT consecutive loopback ports that are free now and
lie below the kernel's ephemeral range (a client's outgoing connection may
take a port from that range between this check and a broker's bind).

    python3 scripts/free-ports.py COUNT
"""
import random
import socket
import sys

count = int(sys.argv[1])
with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
    low = int(f.read().split()[0])
for _ in range(500):
    base = random.randrange(10000, low - count)
    socks = []
    try:
        for port in range(base, base + count):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    print(base)
    sys.exit(0)
sys.exit("no run of free ports below the ephemeral range")
