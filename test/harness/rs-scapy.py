# Sends one router solicitation with a chosen IPv6 hop limit (scapy builds it, so the hop
# limit is whatever the test says, not the kernel's 255) and waits for a router
# advertisement sent to it (a solicited one: unicast to SOURCE, not the periodic ones to
# ff02::1). Prints JSON: {"answered": bool, "raSource": str | null}.
#   rs-scapy.py IFACE MAC SOURCE HOPLIMIT TIMEOUT_S
import json
import sys
import threading

from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import Ether
from scapy.sendrecv import AsyncSniffer, sendp

iface, mac, source, hop_limit, timeout = sys.argv[1:6]
# start() returns before the capture socket is open: an RA answered at once would be
# missed. The RS goes out once the sniffer says it listens.
listening = threading.Event()
sniffer = AsyncSniffer(
    iface=iface,
    lfilter=lambda p: ICMPv6ND_RA in p and p[IPv6].dst == source,
    count=1,
    timeout=float(timeout),
    started_callback=listening.set,
)
sniffer.start()
if not listening.wait(5):
    sys.exit("rs-scapy: the sniffer did not start within 5 s")
rs = (
    Ether(src=mac, dst="33:33:00:00:00:02")
    / IPv6(src=source, dst="ff02::2", hlim=int(hop_limit))
    / ICMPv6ND_RS()
    / ICMPv6NDOptSrcLLAddr(lladdr=mac)
)
sendp(rs, iface=iface, verbose=False)
sniffer.join()
got = sniffer.results or []
print(json.dumps({"answered": len(got) > 0, "raSource": got[0][IPv6].src if got else None}))
