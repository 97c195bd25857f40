#!/usr/bin/env python3
"""A tiny DNS server for image/check.sh, run only inside a network namespace of its own.

Usage: fake-dns.py READY_FILE NAME=IPV4...

Listens on 127.0.0.1:53 (UDP), answers A queries for the given names, an empty answer for their
other record types, NXDOMAIN for any other name. Creates READY_FILE once listening. Stops by itself
after 60 seconds or 500 queries. Prints each query (name and type) to stdout.
"""

import socket
import struct
import sys
import time


def main() -> int:
    ready, answers = sys.argv[1], {}
    for arg in sys.argv[2:]:
        name, ip = arg.split("=", 1)
        answers[name.lower().rstrip(".")] = socket.inet_aton(ip)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 53))
    open(ready, "w").close()
    deadline = time.monotonic() + 60
    for _ in range(500):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            query, peer = sock.recvfrom(512)
        except socket.timeout:
            break
        if len(query) < 17:
            continue
        txid = struct.unpack(">H", query[:2])[0]
        pos, labels = 12, []
        while pos < len(query) and query[pos]:
            n = query[pos]
            labels.append(query[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
            pos += 1 + n
        qtype = struct.unpack(">H", query[pos + 1 : pos + 3])[0]
        question = query[12 : pos + 5]
        name = ".".join(labels).lower()
        print(f"{name} type={qtype}", flush=True)
        answer, count, rcode = b"", 0, 3
        if name in answers:
            rcode = 0
            if qtype == 1:
                answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + answers[name]
                count = 1
        header = struct.pack(">HHHHHH", txid, 0x8180 | rcode, 1, count, 0, 0)
        sock.sendto(header + question + answer, peer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
