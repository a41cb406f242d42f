#!/usr/bin/python3
"""Sends UDP datagrams round-robin to several ports of one host at a steady rate.

  udp_blast.py --dst IP --ports 5001,5002 --rate PPS --seconds S

Prints `ready` when the socket is open, then, when done, one JSON object mapping each
port to the number of datagrams the kernel accepted for sending. The rate is paced per
batch so that the receiving queue never overflows: lost datagrams must mean a verdict.
"""

import argparse
import json
import socket
import sys
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dst", required=True)
    parser.add_argument("--ports", required=True)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    ports = [int(p) for p in args.ports.split(",")]
    family = socket.AF_INET6 if ":" in args.dst else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sent = {port: 0 for port in ports}
    print("ready", flush=True)

    batch = max(1, args.rate // 100)
    interval = batch / args.rate
    deadline = time.monotonic() + args.seconds
    next_batch = time.monotonic()
    seq = 0
    # SIGINT (the usual way to stop it) ends the run cleanly, with the counts printed.
    try:
        while time.monotonic() < deadline:
            for _ in range(batch):
                port = ports[seq % len(ports)]
                try:
                    sock.sendto(b"portfw-blast %d" % seq, (args.dst, port))
                    sent[port] += 1
                except OSError:
                    pass
                seq += 1
            next_batch += interval
            delay = next_batch - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    except KeyboardInterrupt:
        pass
    print(json.dumps({str(k): v for k, v in sent.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
