# An independent DHCPv6 and NDP implementation (scapy) for the codec tests: it builds the
# messages a client sends and decodes what vmlet sends back, so both ends are checked
# against someone else's reading of RFC 8415 and RFC 4861.
#   clients MAC SERVER_MAC      -> JSON {name: hex} of client messages
#   decode                      -> reads JSON {name: hex} of replies, prints JSON summaries
#   ra                          -> reads one RA as hex, prints a JSON summary
import json
import sys

from scapy.layers.dhcp6 import (
    DHCP6_Confirm, DHCP6_Decline, DHCP6_InfoRequest, DHCP6_Rebind, DHCP6_Release, DHCP6_Renew,
    DHCP6_Request, DHCP6_Solicit, DHCP6OptClientId, DHCP6OptDNSDomains, DHCP6OptDNSServers,
    DHCP6OptElapsedTime, DHCP6OptIA_NA, DHCP6OptIAAddress, DHCP6OptOptReq, DHCP6OptPref,
    DHCP6OptRapidCommit, DHCP6OptServerId, DHCP6OptStatusCode, DUID_LL, DUID_LLT, DUID_EN,
    DHCP6_Advertise, DHCP6_Reply,
)
from scapy.layers.inet6 import (
    ICMPv6ND_RA, ICMPv6NDOptMTU, ICMPv6NDOptPrefixInfo, ICMPv6NDOptRDNSS, ICMPv6NDOptSrcLLAddr,
    ICMPv6NDOptDNSSL,
)
from scapy.packet import Raw


def clients(mac, server_mac):
    server = DHCP6OptServerId(duid=DUID_LL(lladdr=server_mac))
    llt = DHCP6OptClientId(duid=DUID_LLT(lladdr=mac, timeval=123456))
    en = DHCP6OptClientId(duid=DUID_EN(enterprisenum=43793, id=b"\x01\x02\x03\x04\x05\x06\x07\x08"))
    oro = DHCP6OptOptReq(reqopts=[23, 24])
    ia = lambda addr=None: DHCP6OptIA_NA(iaid=0x0A0B0C0D, T1=0, T2=0, ianaopts=(
        [DHCP6OptIAAddress(addr=addr, preflft=0, validlft=0)] if addr else []))
    et = DHCP6OptElapsedTime(elapsedtime=0)
    out = {
        "solicit": DHCP6_Solicit(trid=0x123456) / llt / et / oro / ia(),
        "solicit_rapid": DHCP6_Solicit(trid=0x010203) / llt / et / DHCP6OptRapidCommit() / oro / ia(),
        "solicit_en": DHCP6_Solicit(trid=0x0a0b0c) / en / et / ia(),
        "request": DHCP6_Request(trid=0x222222) / llt / server / et / oro / ia("fd00:10:244:1::5"),
        "request_foreign": DHCP6_Request(trid=0x222223) / llt / server / ia("2001:db8::99"),
        "renew": DHCP6_Renew(trid=0x333333) / llt / server / ia("fd00:10:244:1::5"),
        "renew_other_server": DHCP6_Renew(trid=0x333334) / llt / DHCP6OptServerId(
            duid=DUID_LL(lladdr="02:00:00:00:00:09")) / ia("fd00:10:244:1::5"),
        "rebind_old": DHCP6_Rebind(trid=0x444444) / llt / ia("fd00:10:244:1::77"),
        "confirm_ok": DHCP6_Confirm(trid=0x555555) / llt / ia("fd00:10:244:1::5"),
        "confirm_bad": DHCP6_Confirm(trid=0x555556) / llt / ia("2001:db8::1"),
        "inforeq": DHCP6_InfoRequest(trid=0x666666) / llt / oro,
        "release": DHCP6_Release(trid=0x777777) / llt / server / ia("fd00:10:244:1::5"),
        "decline_other": DHCP6_Decline(trid=0x777778) / llt / server / ia("2001:db8::5"),
    }
    return {k: bytes(v).hex() for k, v in out.items()}


def summary(data):
    msg = {2: DHCP6_Advertise, 7: DHCP6_Reply}[data[0]](data)
    s = {"type": data[0], "trid": msg.trid, "ia": [], "status": [], "dns": [], "domains": []}
    layer = msg.payload
    while layer and not isinstance(layer, Raw):
        if isinstance(layer, DHCP6OptServerId):
            s["serverMac"] = layer.duid.lladdr
            s["serverDuidType"] = layer.duid.type
        elif isinstance(layer, DHCP6OptClientId):
            s["clientDuid"] = bytes(layer.duid).hex()
        elif isinstance(layer, DHCP6OptIA_NA):
            ia = {"iaid": layer.iaid, "t1": layer.T1, "t2": layer.T2, "addresses": [], "status": []}
            for o in layer.ianaopts:
                if isinstance(o, DHCP6OptIAAddress):
                    ia["addresses"].append([o.addr, o.preflft, o.validlft])
                elif isinstance(o, DHCP6OptStatusCode):
                    ia["status"].append(o.statuscode)
            s["ia"].append(ia)
        elif isinstance(layer, DHCP6OptStatusCode):
            s["status"].append(layer.statuscode)
        elif isinstance(layer, DHCP6OptDNSServers):
            s["dns"] = list(layer.dnsservers)
        elif isinstance(layer, DHCP6OptDNSDomains):
            s["domains"] = [(d.decode() if isinstance(d, bytes) else d).rstrip(".") for d in layer.dnsdomains]
        elif isinstance(layer, DHCP6OptRapidCommit):
            s["rapidCommit"] = True
        elif isinstance(layer, DHCP6OptPref):
            s["preference"] = layer.prefval
        layer = layer.payload
    return s


def ra(data):
    pkt = ICMPv6ND_RA(data)
    s = {"type": pkt.type, "M": pkt.M, "O": pkt.O, "routerlifetime": pkt.routerlifetime,
         "chlim": pkt.chlim, "prefixes": [], "rdnss": [], "dnssl": []}
    layer = pkt.payload
    while layer and not isinstance(layer, Raw):
        if isinstance(layer, ICMPv6NDOptSrcLLAddr):
            s["slla"] = layer.lladdr
        elif isinstance(layer, ICMPv6NDOptMTU):
            s["mtu"] = layer.mtu
        elif isinstance(layer, ICMPv6NDOptPrefixInfo):
            s["prefixes"].append({"prefix": layer.prefix, "len": layer.prefixlen, "L": layer.L,
                                  "A": layer.A, "valid": layer.validlifetime})
        elif isinstance(layer, ICMPv6NDOptRDNSS):
            s["rdnss"] = list(layer.dns)
            s["rdnssLifetime"] = layer.lifetime
        elif isinstance(layer, ICMPv6NDOptDNSSL):
            s["dnssl"] = [(d.decode() if isinstance(d, bytes) else d).rstrip(".") for d in layer.searchlist]
        layer = layer.payload
    if isinstance(layer, Raw):
        s["undecoded"] = bytes(layer).hex()
    return s


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "clients":
        print(json.dumps(clients(sys.argv[2], sys.argv[3])))
    elif mode == "decode":
        print(json.dumps({k: summary(bytes.fromhex(v)) for k, v in json.load(sys.stdin).items()}))
    elif mode == "ra":
        print(json.dumps(ra(bytes.fromhex(sys.stdin.read().strip()))))
