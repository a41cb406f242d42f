#!/usr/bin/python3
"""Answers on the given TCP and UDP ports, over IPv4 and IPv6, so lab tests see real replies.

TCP: every connection gets a short HTTP/1.0 response and is closed, which
satisfies curl as well as `nc`. UDP: every datagram gets `portfw-ok <port>`.
Prints `ready` once every socket listens; runs until killed.
"""

import argparse
import signal
import socket
import sys
import threading

HTTP_REPLY = b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nportfw-ok\n"


def port_list(text):
    """Parses `22,80,8000-8002` into a list of ports."""
    ports = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if not 0 < first <= last <= 65535:
            raise argparse.ArgumentTypeError(f"bad port or range: {part}")
        ports.extend(range(first, last + 1))
    return ports


def bind(kind, port):
    """One dual-stack socket per port; IPv4-only if the host has no IPv6."""
    try:
        sock = socket.socket(socket.AF_INET6, kind)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, kind)
        address = ("0.0.0.0", port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sys.exit(f"responder: cannot bind {'tcp' if kind == socket.SOCK_STREAM else 'udp'} port {port}: {err}")
    return sock


def answer_tcp(conn):
    with conn:
        try:
            conn.sendall(HTTP_REPLY)
            conn.shutdown(socket.SHUT_WR)
            # Read what the client sent (curl's request) before closing: closing
            # with unread data makes the kernel send a reset instead of a FIN,
            # and the client may then lose the reply.
            conn.settimeout(1.0)
            while conn.recv(4096):
                pass
        except OSError:
            pass


def serve_tcp(sock):
    while True:
        try:
            conn, _peer = sock.accept()
        except OSError:
            continue
        threading.Thread(target=answer_tcp, args=(conn,), daemon=True).start()


def serve_udp(sock, port):
    reply = f"portfw-ok {port}\n".encode()
    while True:
        try:
            _data, peer = sock.recvfrom(65535)
            sock.sendto(reply, peer)
        except OSError:
            continue


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tcp", type=port_list, default=[], help="TCP ports, e.g. 22,80,8000-8002")
    parser.add_argument("--udp", type=port_list, default=[], help="UDP ports, e.g. 53,5001")
    args = parser.parse_args()
    if not args.tcp and not args.udp:
        parser.error("give --tcp and/or --udp ports")

    threads = []
    for port in args.tcp:
        sock = bind(socket.SOCK_STREAM, port)
        sock.listen(128)
        threads.append(threading.Thread(target=serve_tcp, args=(sock,), daemon=True))
    for port in args.udp:
        sock = bind(socket.SOCK_DGRAM, port)
        threads.append(threading.Thread(target=serve_udp, args=(sock, port), daemon=True))
    for thread in threads:
        thread.start()

    # Exit quietly on SIGTERM and SIGINT; the daemon threads die with us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
