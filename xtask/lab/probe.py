#!/usr/bin/python3
"""Tries one TCP connection or UDP exchange and prints open, refused or timeout, then any reply.

Exit status 0 for those three outcomes; anything else (no route, bad
arguments) prints the error on stderr and exits 2, so a caller can tell a
silent drop from a broken lab.
"""

import argparse
import socket
import sys
import time


def probe_tcp(family, host, port, timeout):
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except socket.timeout:
            return "timeout", b""
        except ConnectionRefusedError:
            return "refused", b""
        # Collect what the peer says until it closes or the time is up.
        reply = b""
        deadline = time.monotonic() + timeout
        while len(reply) < 4096:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(4096)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            reply += chunk
        return "open", reply


def probe_udp(family, host, port, timeout, payload):
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        # Connected, so an ICMP port unreachable comes back as ECONNREFUSED.
        sock.connect((host, port))
        try:
            sock.send(payload)
            return "open", sock.recv(65535)
        except socket.timeout:
            return "timeout", b""
        except ConnectionRefusedError:
            return "refused", b""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("proto", choices=["tcp", "udp"])
    parser.add_argument("host", help="IPv4 or IPv6 address")
    parser.add_argument("port", type=int)
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    parser.add_argument("--send", default="portfw-probe\n", help="UDP payload")
    args = parser.parse_args()
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        if args.proto == "tcp":
            verdict, reply = probe_tcp(family, args.host, args.port, args.timeout)
        else:
            verdict, reply = probe_udp(family, args.host, args.port, args.timeout, args.send.encode())
    except OSError as err:
        print(f"probe: {args.proto} {args.host} port {args.port}: {err}", file=sys.stderr)
        sys.exit(2)
    sys.stdout.write(verdict + "\n" + reply.decode("utf-8", "replace"))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
