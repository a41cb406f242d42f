#!/usr/bin/python3
"""The clients of the defence tests: scans, bursts, knocks, a held connection, floods.

Every sender binds the source address it is given, so one client namespace can play several
hosts. Each command is bounded in packets and time, prints one JSON line with what it saw,
and exits 0; a broken lab (no such address, bad arguments) exits 2.
"""

import argparse
import json
import select
import socket
import struct
import sys
import threading
import time


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


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


def stream_from(src, dst):
    sock = socket.socket(family_of(dst), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((src, 0))
    return sock


def dgram_from(src, dst):
    sock = socket.socket(family_of(dst), socket.SOCK_DGRAM)
    sock.bind((src, 0))
    return sock


def connect_all(src, dst, ports, timeout):
    """Starts a TCP connection to every port at once and waits up to `timeout` for them.

    Returns (connected, refused, silent) port lists, and the connected sockets still open,
    so that a burst holds its connections until all attempts are over."""
    pending = {}
    for port in ports:
        sock = stream_from(src, dst)
        sock.setblocking(False)
        err = sock.connect_ex((dst, port))
        pending[sock] = port
    connected, refused, held = [], [], []
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        _, writable, _ = select.select([], list(pending), [], left)
        for sock in writable:
            port = pending.pop(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:
                connected.append(port)
                held.append(sock)
            else:
                refused.append(port)
                sock.close()
    silent = sorted(pending.values())
    for sock in pending:
        sock.close()
    return sorted(connected), sorted(refused), silent, held


def cmd_scan(args):
    """A connect scan of `ports` from `src`, all at once (a fast scanner's pattern)."""
    if args.udp:
        sock = dgram_from(args.src, args.dst)
        for port in args.ports:
            sock.sendto(b"portfw-scan\n", (args.dst, port))
        print(json.dumps({"sent": len(args.ports)}))
        return
    connected, refused, silent, held = connect_all(args.src, args.dst, args.ports, args.timeout)
    for sock in held:
        sock.close()
    print(json.dumps({"open": connected, "refused": refused, "silent": silent}))


def cmd_burst(args):
    """`count` TCP connections to one port at once; how many got through."""
    connected, refused, silent, held = connect_all(
        args.src, args.dst, [args.port] * args.count, args.timeout
    )
    for sock in held:
        sock.close()
    print(json.dumps({"connected": len(connected), "refused": len(refused), "silent": len(silent)}))


def cmd_udp_burst(args):
    """`count` UDP datagrams to one port; how many answers came back."""
    sock = dgram_from(args.src, args.dst)
    for _ in range(args.count):
        sock.sendto(b"portfw-burst\n", (args.dst, args.port))
    answers = 0
    deadline = time.monotonic() + args.timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            sock.recvfrom(2048)
            answers += 1
        except (socket.timeout, ConnectionRefusedError):
            break
    print(json.dumps({"sent": args.count, "answers": answers}))


def knock_tcp(src, dst, port):
    """One SYN, as knockd's client sends it: a non-blocking connect, closed at once (a
    socket closed in SYN-SENT sends nothing more)."""
    sock = stream_from(src, dst)
    sock.setblocking(False)
    sock.connect_ex((dst, port))
    time.sleep(0.02)
    sock.close()


def cmd_knock(args):
    """Knocks `sequence` (PORT/PROTO,...) from `src`, `delay` seconds apart."""
    for i, step in enumerate(args.sequence.split(",")):
        if i:
            time.sleep(args.delay)
        port, _, proto = step.partition("/")
        if proto == "udp":
            sock = dgram_from(args.src, args.dst)
            sock.sendto(b"", (args.dst, int(port)))
            sock.close()
        else:
            knock_tcp(args.src, args.dst, int(port))
    print(json.dumps({"knocked": args.sequence}))


def cmd_hold(args):
    """One TCP connection that exchanges a line, waits `pause` seconds, and exchanges another:
    prints what each exchange got back (null when nothing did)."""
    sock = stream_from(args.src, args.dst)
    sock.settimeout(args.timeout)
    try:
        sock.connect((args.dst, args.port))
    except OSError as err:
        print(json.dumps({"connected": False, "error": str(err)}))
        return
    replies = []
    for i, line in enumerate([b"before\n", b"after\n"]):
        if i:
            print(json.dumps({"first": replies[0]}), file=sys.stderr, flush=True)
            time.sleep(args.pause)
        try:
            sock.sendall(line)
            got = sock.recv(4096)
            replies.append(got.decode("utf-8", "replace") if got else None)
        except OSError as err:
            replies.append(None)
            print(f"hold: exchange {i + 1}: {err}", file=sys.stderr)
    sock.close()
    print(json.dumps({"connected": True, "first": replies[0], "second": replies[1]}))


def cmd_echo(args):
    """Echoes every line on TCP `port` (IPv4 and IPv6) until killed; prints `ready`."""
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("::", args.port))
    listener.listen(128)

    def serve(conn):
        with conn:
            try:
                while True:
                    data = conn.recv(4096)
                    if not data:
                        return
                    conn.sendall(b"echo " + data)
            except OSError:
                return

    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def cmd_flood(args):
    """`count` UDP datagrams from `src`, cycling over `ports`, paced in batches so that the
    veth's queue does not overflow before the filter sees them."""
    sock = dgram_from(args.src, args.dst)
    ports = args.ports
    sent = 0
    started = time.monotonic()
    while sent < args.count:
        for _ in range(min(args.batch, args.count - sent)):
            try:
                sock.sendto(b"flood", (args.dst, ports[sent % len(ports)]))
            except ConnectionRefusedError:
                pass
            sent += 1
        time.sleep(args.pause)
        if time.monotonic() - started > args.limit:
            break
    print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - started, 3)}))


def cmd_send(args):
    """One UDP datagram with the payload given in hex (a replayed capture)."""
    sock = dgram_from(args.src, args.dst)
    sock.sendto(bytes.fromhex(args.hex), (args.dst, args.port))
    print(json.dumps({"sent": len(args.hex) // 2}))


def cmd_pcap_payloads(args):
    """The UDP payloads of a tcpdump capture (Ethernet, IPv4 or IPv6), in hex, one per line."""
    with open(args.file, "rb") as f:
        data = f.read()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    offset, payloads = 24, []
    while offset + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        ethertype = struct.unpack("!H", frame[12:14])[0]
        if ethertype == 0x0800:
            ihl = (frame[14] & 0x0F) * 4
            if frame[23] != 17:
                continue
            udp = frame[14 + ihl :]
        elif ethertype == 0x86DD:
            if frame[20] != 17:
                continue
            udp = frame[54:]
        else:
            continue
        length = struct.unpack("!H", udp[4:6])[0]
        payloads.append(udp[8:length].hex())
    print(json.dumps({"payloads": payloads}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_ends(p):
        p.add_argument("--src", required=True, help="source address to bind")
        p.add_argument("--dst", required=True)
        return p

    p = with_ends(sub.add_parser("scan"))
    p.add_argument("--ports", type=port_list, required=True)
    p.add_argument("--timeout", type=float, default=0.8)
    p.add_argument("--udp", action="store_true")
    p.set_defaults(run=cmd_scan)

    p = with_ends(sub.add_parser("burst"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--timeout", type=float, default=1.5)
    p.set_defaults(run=cmd_burst)

    p = with_ends(sub.add_parser("udp-burst"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--timeout", type=float, default=1.0)
    p.set_defaults(run=cmd_udp_burst)

    p = with_ends(sub.add_parser("knock"))
    p.add_argument("--sequence", required=True, help="PORT/PROTO,... e.g. 7001/udp,7002/tcp")
    p.add_argument("--delay", type=float, default=0.05, help="seconds between knocks")
    p.set_defaults(run=cmd_knock)

    p = with_ends(sub.add_parser("hold"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pause", type=float, required=True)
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(run=cmd_hold)

    p = sub.add_parser("echo")
    p.add_argument("--port", type=int, required=True)
    p.set_defaults(run=cmd_echo)

    p = with_ends(sub.add_parser("flood"))
    p.add_argument("--ports", type=port_list, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--pause", type=float, default=0.002)
    p.add_argument("--limit", type=float, default=30.0, help="give up after this many seconds")
    p.set_defaults(run=cmd_flood)

    p = with_ends(sub.add_parser("send"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--hex", required=True)
    p.set_defaults(run=cmd_send)

    p = sub.add_parser("pcap-payloads")
    p.add_argument("file")
    p.set_defaults(run=cmd_pcap_payloads)

    args = parser.parse_args()
    try:
        args.run(args)
    except OSError as err:
        print(f"tools: {args.command}: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
