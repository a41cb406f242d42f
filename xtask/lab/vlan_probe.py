#!/usr/bin/python3
"""Sends and captures VLAN-tagged TCP/UDP frames (802.1Q, and 802.1ad QinQ) for the XDP VLAN tests.

  vlan_probe.py sniff --iface IF --out FILE --timeout S [--count N]
      Records every TCP/UDP packet received on IF as
      {"vlans": [outer, inner], "proto": "tcp"|"udp", "dport": N, "src": ..., "dst": ...}
      in a JSON list written to FILE. Prints `ready` once the socket is open.
  vlan_probe.py send --iface IF --src-mac M --dst-mac M --src IP --dst IP
                     [--vlans 10[,20]] (--tcp PORT | --udp PORT) [--count N]
      Sends N frames; one VLAN id gives an 802.1Q tag, two give an 802.1ad
      (0x88a8) outer tag around an 802.1Q inner tag.
"""

import argparse
import ipaddress
import json
import socket
import sys

from scapy.config import conf
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.sendrecv import sendp, sniff

ETH_P_ALL = 0x0003


def describe(pkt):
    """The VLAN ids and transport header of a received frame, or None if it is not TCP/UDP.

    Exact type checks on purpose: the headers quoted inside ICMP errors decode
    as subclasses of IP/TCP/UDP and must not count as traffic.
    """
    vlans = []
    addresses = None
    layer = pkt
    while layer is not None and layer.__class__.__name__ != "NoPayload":
        kind = type(layer)
        if kind in (Dot1Q, Dot1AD):
            vlans.append(int(layer.vlan))
        elif kind in (IP, IPv6):
            addresses = (layer.src, layer.dst)
        elif kind in (TCP, UDP) and addresses is not None:
            return {
                "vlans": vlans,
                "proto": "tcp" if kind is TCP else "udp",
                "dport": int(layer.dport),
                "sport": int(layer.sport),
                "src": addresses[0],
                "dst": addresses[1],
            }
        layer = layer.payload
    return None


def cmd_sniff(args):
    seen = []

    def record(pkt):
        summary = describe(pkt)
        if summary is not None:
            seen.append(summary)

    def done(_pkt):
        return args.count is not None and len(seen) >= args.count

    # scapy's L2Socket skips our own outgoing frames and, through
    # PACKET_AUXDATA, puts back the VLAN tag the kernel moved out of the frame.
    sock = conf.L2socket(iface=args.iface, type=ETH_P_ALL)
    try:
        sniff(
            opened_socket=sock,
            prn=record,
            store=False,
            timeout=args.timeout,
            stop_filter=done,
            started_callback=lambda: print("ready", flush=True),
        )
    finally:
        sock.close()
    with open(args.out, "w", encoding="utf-8") as out:
        # One line, keys in a fixed order, so callers can also match substrings.
        json.dump(seen, out)
        out.write("\n")
    print(f"captured {len(seen)} tcp/udp packets", file=sys.stderr)


def cmd_send(args):
    frame = Ether(src=args.src_mac, dst=args.dst_mac)
    if len(args.vlans) == 1:
        frame /= Dot1Q(vlan=args.vlans[0])
    elif len(args.vlans) == 2:
        # The outer tag's type is what makes this QinQ: Ether type 0x88a8.
        frame /= Dot1AD(vlan=args.vlans[0]) / Dot1Q(vlan=args.vlans[1])
    elif args.vlans:
        sys.exit("vlan_probe: at most two VLAN tags")
    dst = ipaddress.ip_address(args.dst)
    if ipaddress.ip_address(args.src).version != dst.version:
        sys.exit("vlan_probe: --src and --dst must be the same IP version")
    frame /= IPv6(src=args.src, dst=args.dst) if dst.version == 6 else IP(src=args.src, dst=args.dst)
    if args.tcp is not None:
        frame /= TCP(sport=args.sport, dport=args.tcp, flags="S", seq=1000)
    else:
        frame /= UDP(sport=args.sport, dport=args.udp) / b"portfw-vlan\n"
    sendp(frame, iface=args.iface, count=args.count, verbose=False)
    print(f"sent {args.count} x {frame.summary()}")


def vlan_list(text):
    try:
        vlans = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad VLAN list: {text}") from None
    if any(not 0 <= v <= 4095 for v in vlans):
        raise argparse.ArgumentTypeError(f"VLAN ids are 0..4095: {text}")
    return vlans


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    p_sniff = sub.add_parser("sniff", help="capture TCP/UDP frames and their VLAN tags")
    p_sniff.add_argument("--iface", required=True)
    p_sniff.add_argument("--out", required=True, help="JSON file to write")
    p_sniff.add_argument("--timeout", type=float, required=True, help="seconds to listen")
    p_sniff.add_argument("--count", type=int, help="stop after this many TCP/UDP packets")

    p_send = sub.add_parser("send", help="send tagged TCP SYNs or UDP datagrams")
    p_send.add_argument("--iface", required=True)
    p_send.add_argument("--src-mac", required=True)
    p_send.add_argument("--dst-mac", required=True)
    p_send.add_argument("--src", required=True, help="source IPv4 or IPv6 address")
    p_send.add_argument("--dst", required=True, help="destination IPv4 or IPv6 address")
    p_send.add_argument("--vlans", type=vlan_list, default=[], help="outer[,inner] VLAN ids")
    p_send.add_argument("--sport", type=int, default=40000)
    p_send.add_argument("--count", type=int, default=1)
    proto = p_send.add_mutually_exclusive_group(required=True)
    proto.add_argument("--tcp", type=int, metavar="PORT")
    proto.add_argument("--udp", type=int, metavar="PORT")

    args = parser.parse_args()
    conf.verb = 0
    try:
        if args.cmd == "sniff":
            cmd_sniff(args)
        else:
            cmd_send(args)
    except (OSError, ValueError) as err:
        sys.exit(f"vlan_probe {args.cmd}: {err}")


if __name__ == "__main__":
    main()
