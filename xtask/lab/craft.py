#!/usr/bin/python3
"""Sends hand-crafted frames (QinQ, IPv6 extension headers, IPv4 options, fragments, truncations) and records which arrive.

  craft.py send --iface IF --src-mac M --dst-mac M --src4 A --dst4 A --src6 A --dst6 A --manifest FILE
      Builds every case with scapy, writes {"cases": [{"name", "description", "frames": [hex]}],
      "end": hex} to FILE, sends each frame as is over a packet socket, then the end marker
      (an LLDP frame). Prints the number of frames sent.
  craft.py sniff --iface IF --out FILE --timeout S
      Records the hex of every frame received on IF (not those it sends) until the end marker
      arrives or S seconds pass, and writes them as a JSON list to FILE. VLAN tags the kernel
      took out of the frame are put back from PACKET_AUXDATA, so a frame reads as it was sent.
      Prints `ready` once the socket is open.

The verdicts the frames must get live in portfw-user/tests/crafted.rs, not here.
"""

import argparse
import json
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
END_PAYLOAD = b"portfw-craft-end"


def build_cases(args):
    """The cases as (name, description, [frame bytes]); every frame is distinct."""
    # Imported here so that `sniff` starts at once: scapy takes a second to load.
    from scapy.layers.inet import IP, TCP, UDP, ICMP, IPOption_NOP, IPOption_RR
    from scapy.layers.inet6 import (
        IPv6,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrFragment,
        IPv6ExtHdrHopByHop,
        IPv6ExtHdrRouting,
    )
    from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

    eth = Ether(src=args.src_mac, dst=args.dst_mac)
    cases = []
    ident = [0x4000]

    def marker(name):
        return ("portfw-craft " + name + "\n").encode()

    def ip4(**kw):
        # A distinct IP id per datagram keeps every frame distinct.
        ident[0] += 1
        return IP(src=args.src4, dst=args.dst4, id=ident[0], **kw)

    def ip6(**kw):
        return IPv6(src=args.src6, dst=args.dst6, **kw)

    def syn(dport, sport=40000):
        return TCP(sport=sport, dport=dport, flags="S", seq=1000)

    def add(name, description, frames):
        cases.append((name, description, [bytes(f) for f in frames]))

    def split(transport, cuts):
        """(offset in 8-byte units, more fragments, bytes) for `transport` cut at `cuts`."""
        bounds = [0] + cuts + [len(transport)]
        last = len(bounds) - 2
        return [
            (bounds[i] // 8, i < last, transport[bounds[i]:bounds[i + 1]])
            for i in range(last + 1)
        ]

    def v4_fragments(proto, pieces):
        ident[0] += 1
        return [
            eth
            / IP(src=args.src4, dst=args.dst4, id=ident[0], proto=proto,
                 flags="MF" if more else 0, frag=offset)
            / data
            for offset, more, data in pieces
        ]

    def v6_fragments(nh, pieces, ext=None):
        ident[0] += 1
        frames = []
        for offset, more, data in pieces:
            head = ip6()
            if ext is not None:
                head = head / ext.copy()
            frames.append(
                eth / head
                / IPv6ExtHdrFragment(nh=nh, offset=offset, m=int(more), id=ident[0])
                / data
            )
        return frames

    # QinQ and VLAN stacks.
    add("qinq-88a8-tcp-22", "802.1ad + 802.1Q, TCP SYN to 22",
        [eth / Dot1AD(vlan=100) / Dot1Q(vlan=200) / ip4() / syn(22) / marker("qinq-22")])
    add("qinq-88a8-tcp-8000", "802.1ad + 802.1Q, TCP SYN to 8000",
        [eth / Dot1AD(vlan=100) / Dot1Q(vlan=200) / ip4() / syn(8000) / marker("qinq-8000")])
    add("qinq-9100-udp-53", "0x9100 + 802.1Q, UDP to 53",
        [Ether(src=args.src_mac, dst=args.dst_mac, type=0x9100) / Dot1Q(vlan=100)
         / Dot1Q(vlan=200) / ip4() / UDP(sport=40000, dport=53) / marker("9100-53")])
    add("qinq-v6-udp-53", "802.1ad + 802.1Q, IPv6 UDP to 53",
        [eth / Dot1AD(vlan=101) / Dot1Q(vlan=201) / ip6() / UDP(sport=40000, dport=53)
         / marker("qinq-v6-53")])
    add("three-tags", "three VLAN tags around a TCP SYN to 22",
        [eth / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / ip4() / syn(22)
         / marker("three-tags")])

    # IPv6 extension headers.
    chain = IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(addresses=[])
    add("v6-ext-tcp-22", "IPv6 hop-by-hop + destination options + routing, TCP SYN to 22",
        [eth / ip6() / chain.copy() / syn(22) / marker("v6-ext-22")])
    add("v6-ext-tcp-8000", "IPv6 hop-by-hop + destination options + routing, TCP SYN to 8000",
        [eth / ip6() / chain.copy() / syn(8000) / marker("v6-ext-8000")])
    nine = IPv6ExtHdrHopByHop()
    for _ in range(8):
        nine = nine / IPv6ExtHdrDestOpt()
    add("v6-ext-nine", "IPv6 with 9 extension headers, TCP SYN to 22",
        [eth / ip6() / nine / syn(22) / marker("v6-nine")])

    # IPv4 options.
    options = [IPOption_RR(routers=["0.0.0.0", "0.0.0.0"]), IPOption_NOP()]
    add("v4-options-tcp-22", "IPv4 with record-route (IHL 8), TCP SYN to 22",
        [eth / ip4(options=options) / syn(22) / marker("opts-22")])
    add("v4-options-tcp-8000", "IPv4 with record-route (IHL 8), TCP SYN to 8000",
        [eth / ip4(options=options) / syn(8000) / marker("opts-8000")])

    # Fragmented datagrams: the first fragment carries the ports.
    body = b"portfw fragmented datagram body.." * 2  # 66 bytes
    udp53 = bytes(UDP(sport=40000, dport=53, len=8 + len(body), chksum=0) / body)
    udp5353 = bytes(UDP(sport=40000, dport=5353, len=8 + len(body), chksum=0) / body)
    tcp22 = bytes(TCP(sport=40000, dport=22, flags="S", seq=7, chksum=0) / body)
    add("v4-frag-udp-53", "IPv4 UDP to 53 in three fragments",
        v4_fragments(17, split(udp53, [24, 48])))
    add("v4-frag-udp-5353", "IPv4 UDP to 5353 in three fragments",
        v4_fragments(17, split(udp5353, [24, 48])))
    add("v4-tiny-tcp-22", "IPv4 TCP to 22: first fragment of 8 bytes, then offset 1, then 2",
        v4_fragments(6, split(tcp22, [8, 16])))
    # The ports split across fragments: 2 bytes first, the rest from offset 8 on.
    split_ports = [(0, True, udp53[:2]), (1, False, udp53[8:])]
    add("v4-split-ports-udp-53", "IPv4 UDP to 53: first fragment of 2 bytes splits the ports",
        v4_fragments(17, split_ports))
    add("v6-frag-udp-53", "IPv6 UDP to 53 in three fragments",
        v6_fragments(17, split(udp53, [24, 48])))
    add("v6-frag-udp-5353", "IPv6 UDP to 5353 in three fragments behind hop-by-hop",
        v6_fragments(17, split(udp5353, [24, 48]), ext=IPv6ExtHdrHopByHop()))
    add("v6-tiny-tcp-22", "IPv6 TCP to 22: first fragment of 8 bytes, then offset 1",
        v6_fragments(6, split(tcp22, [8])))
    add("v6-split-ports-udp-53", "IPv6 UDP to 53: first fragment of 2 bytes splits the ports",
        v6_fragments(17, split_ports))

    # Truncated frames: each header says more than the frame holds.
    whole4 = bytes(eth / ip4() / syn(22) / marker("cut-v4"))
    add("truncated-v4-tcp", "IPv4 TCP SYN to 22 cut inside the TCP header",
        [whole4[:14 + 20 + 10]])
    whole6 = bytes(eth / ip6() / IPv6ExtHdrHopByHop() / syn(22) / marker("cut-v6"))
    add("truncated-v6-ext", "IPv6 with hop-by-hop cut inside the extension header",
        [whole6[:14 + 40 + 4]])
    whole_vlan = bytes(eth / Dot1AD(vlan=5) / Dot1Q(vlan=6) / ip4() / syn(22))
    add("truncated-vlan", "QinQ frame cut inside the inner tag",
        [whole_vlan[:14 + 4 + 2]])

    # Settings and malformed TCP.
    add("icmp-echo", "ICMP echo request", [eth / ip4() / ICMP(id=7) / marker("icmp")])
    add("lldp", "LLDP frame (non-IP)",
        [Ether(src=args.src_mac, dst=args.dst_mac, type=0x88CC)
         / b"\x02\x07\x04\x02\x70\x66\x00\x00\x02portfw-craft lldp"])
    add("gre", "GRE (other IP protocol)",
        [eth / ip4(proto=47) / b"\x00\x00\x08\x00" / marker("gre")])
    add("tcp-source-port-0", "TCP SYN from port 0 to 22",
        [eth / ip4() / syn(22, sport=0) / marker("sport0")])
    return cases


def end_marker(args):
    from scapy.layers.l2 import Ether

    return bytes(Ether(src=args.src_mac, dst=args.dst_mac, type=0x88CC) / END_PAYLOAD)


def cmd_send(args):
    cases = build_cases(args)
    end = end_marker(args)
    seen = set()
    for name, _, frames in cases:
        for frame in frames:
            if frame in seen:
                sys.exit(f"craft: case {name} repeats a frame")
            seen.add(frame)
    with open(args.manifest, "w", encoding="utf-8") as out:
        json.dump(
            {
                "cases": [
                    {"name": n, "description": d, "frames": [f.hex() for f in fs]}
                    for n, d, fs in cases
                ],
                "end": end.hex(),
            },
            out,
        )
        out.write("\n")
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        sock.bind((args.iface, 0))
        count = 0
        for _, _, frames in cases:
            for frame in frames:
                sock.send(frame)
                count += 1
        # Frames through a veth keep their order; the marker tells the sniffer it saw all.
        sock.send(end)
    finally:
        sock.close()
    print(f"sent {count} frames in {len(cases)} cases")


def with_vlan_restored(data, ancdata):
    """Puts back the outer VLAN tag the kernel moved into the skb's metadata."""
    for level, kind, payload in ancdata:
        if level != SOL_PACKET or kind != PACKET_AUXDATA or len(payload) < 20:
            continue
        status, _, _, _, _, tci, tpid = struct.unpack("IIIHHHH", payload[:20])
        if status & TP_STATUS_VLAN_VALID:
            if not status & TP_STATUS_VLAN_TPID_VALID:
                tpid = 0x8100
            return data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
    return data


def cmd_sniff(args):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    frames = []
    try:
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        sock.bind((args.iface, 0))
        sock.settimeout(0.2)
        print("ready", flush=True)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            try:
                data, ancdata, _, addr = sock.recvmsg(65536, socket.CMSG_SPACE(64))
            except socket.timeout:
                continue
            if addr[2] == PACKET_OUTGOING:
                continue
            frame = with_vlan_restored(data, ancdata)
            if END_PAYLOAD in frame:
                break
            frames.append(frame.hex())
        else:
            print("craft sniff: no end marker before the timeout", file=sys.stderr)
    finally:
        sock.close()
    with open(args.out, "w", encoding="utf-8") as out:
        json.dump(frames, out)
        out.write("\n")
    print(f"captured {len(frames)} frames", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    p_send = sub.add_parser("send", help="send every crafted case")
    p_send.add_argument("--iface", required=True)
    p_send.add_argument("--src-mac", required=True)
    p_send.add_argument("--dst-mac", required=True)
    for name in ("src4", "dst4", "src6", "dst6"):
        p_send.add_argument(f"--{name}", required=True)
    p_send.add_argument("--manifest", required=True, help="JSON file describing what was sent")

    p_sniff = sub.add_parser("sniff", help="record every frame received")
    p_sniff.add_argument("--iface", required=True)
    p_sniff.add_argument("--out", required=True, help="JSON file to write")
    p_sniff.add_argument("--timeout", type=float, required=True, help="seconds to listen at most")

    args = parser.parse_args()
    try:
        if args.cmd == "send":
            cmd_send(args)
        else:
            cmd_sniff(args)
    except (OSError, ValueError) as err:
        sys.exit(f"craft {args.cmd}: {err}")


if __name__ == "__main__":
    main()
