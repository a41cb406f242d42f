#!/usr/bin/python3
"""Sends hand-made TCP segments (spoofed replies) and says how the target answered each.

  spoof.py --case SRC SPORT DST DPORT FLAGS [--case ...] [--timeout S]

Each case is one segment from SRC:SPORT to DST:DPORT with scapy's FLAGS ("SA", "A", "R",
...), an IPv4 or IPv6 packet by the addresses' family. SRC must be an address of this
namespace, so that the answer comes back here. All are sent at once, then answers are
collected for S seconds (default 1.5). Prints one line per case, in order: `rst` when the
target answered with a reset (it received the segment and had no connection for it),
`answer FLAGS` for any other answer, `silence` for none (what a drop in front of the target
looks like).
"""

import argparse
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--case",
        nargs=5,
        action="append",
        required=True,
        metavar=("SRC", "SPORT", "DST", "DPORT", "FLAGS"),
    )
    parser.add_argument("--timeout", type=float, default=1.5)
    args = parser.parse_args()

    # Imported after the arguments are read: scapy takes a second to load.
    from scapy.all import IP, TCP, IPv6, conf, sr

    conf.verb = 0
    packets = []
    for src, sport, dst, dport, flags in args.case:
        ip = IPv6(src=src, dst=dst) if ":" in dst else IP(src=src, dst=dst)
        # An acknowledgement number, so that the reset a target sends answers this segment
        # (RFC 793: seq = our ack), which is how scapy pairs them.
        packets.append(
            ip / TCP(sport=int(sport), dport=int(dport), flags=flags, seq=1000, ack=424242)
        )
    def tuple_of(p):
        return (p.src, p[TCP].sport, p.dst, p[TCP].dport)

    if len({tuple_of(p) for p in packets}) != len(packets):
        sys.exit("spoof.py: two cases with the same addresses and ports")
    answered, _ = sr(packets, timeout=args.timeout, multi=False)
    replies = {tuple_of(sent): received for sent, received in answered}
    for packet in packets:
        received = replies.get(tuple_of(packet))
        if received is None or TCP not in received:
            print("silence" if received is None else "answer " + received.summary())
        elif received[TCP].flags.R:
            print("rst")
        else:
            print("answer " + str(received[TCP].flags))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
