// The kernel's netlink, rtnetlink and tc numbers vmlet uses, named as in the uapi header
// each comes from, in one place: rtnl.ts, tc.ts and the guest view read them from here.

// linux/socket.h: address families
export const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_BRIDGE = 7;
export const AF_INET6 = 10;

// linux/netlink.h: nlmsghdr flags for new objects, and the nested-attribute bit
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
export const NLA_F_NESTED = 0x8000;
/** A GET request that dumps (NLM_F_ROOT | NLM_F_MATCH). */
export const NLM_F_DUMP = 0x300;
/** setsockopt level and option: dump requests' headers and attributes filter in the kernel. */
export const SOL_NETLINK = 270;
export const NETLINK_GET_STRICT_CHK = 12;

// linux/sockios.h: a link's index by name (struct ifreq), on any socket of its netns
export const SIOCGIFINDEX = 0x8933;
/** A link's hardware address by name: a struct sockaddr in the union (sa_data). */
export const SIOCGIFHWADDR = 0x8927;
/** struct ifreq: the name (IFNAMSIZ), then the union where ifr_ifindex is. */
export const IFREQ_SIZE = 40;
export const IFNAMSIZ = 16;

// linux/rtnetlink.h: message types the netlink package does not name
export const RTM_NEWQDISC = 36;
export const RTM_NEWTFILTER = 44;
export const RTM_DELTFILTER = 45;

// linux/rtnetlink.h: message types and attributes of addresses and routes vmlet parses itself
export const RTM_NEWADDR = 20;
export const RTM_GETADDR = 22;
export const RTM_NEWROUTE = 24;
export const RTM_GETROUTE = 26;
/** linux/if_addr.h: struct ifaddrmsg, and IFA_ADDRESS, IFA_LOCAL. */
export const IFADDRMSG_SIZE = 8;
export const IFA_ADDRESS = 1;
export const IFA_LOCAL = 2;
/** struct rtmsg, and RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE. */
export const RTMSG_SIZE = 12;
export const RTA_DST = 1;
export const RTA_OIF = 4;
export const RTA_GATEWAY = 5;
export const RTA_PRIORITY = 6;
export const RTA_TABLE = 15;

// linux/rtnetlink.h: enum rt_scope_t
export const RT_SCOPE_UNIVERSE = 0;
export const RT_SCOPE_LINK = 253;
export const RT_SCOPE_HOST = 254;
/** As a request's scope: match a route of any scope. */
export const RT_SCOPE_NOWHERE = 255;

// linux/rtnetlink.h: route types, tables, protocols, next-hop flags
export const RTN_UNICAST = 1;
export const RTN_LOCAL = 2;
export const RT_TABLE_MAIN = 254;
export const RTPROT_BOOT = 3;
export const RTNH_F_ONLINK = 4;

// linux/if_link.h: enum IFLA_*, and IFLA_BRPORT_* nested in IFLA_PROTINFO for AF_BRIDGE
export const IFLA_ADDRESS = 1;
export const IFLA_IFNAME = 3;
export const IFLA_PROTINFO = 12;
export const IFLA_LINKINFO = 18;
export const IFLA_AF_SPEC = 26;
export const IFLA_NET_NS_FD = 28;
/** Nested in IFLA_AF_SPEC's AF_INET: the link's IPv4 devconf, by IPV4_DEVCONF_* index. */
export const IFLA_INET_CONF = 1;
// linux/ip.h: enum IPV4_DEVCONF_*
export const IPV4_DEVCONF_ARP_IGNORE = 19;
// linux/rtnetlink.h
export const RTM_SETLINK = 19;
export const IFLA_BRPORT_LEARNING = 8;

// linux/veth.h
export const VETH_INFO_PEER = 1;

// linux/neighbour.h
export const NDA_LLADDR = 2;
export const NDA_MASTER = 9;
export const NTF_MASTER = 0x04;
/** A bridge FDB entry with it is "static": forwarded, never aged, not local. */
export const NUD_NOARP = 0x40;

// linux/rtnetlink.h, linux/pkt_sched.h: tc messages
export const TCA_KIND = 1;
export const TCA_OPTIONS = 2;
export const TC_H_MAJ_MASK = 0xffff0000;
export const TC_H_CLSACT = 0xfffffff1;
export const TC_H_MIN_INGRESS = 0xfff2;
export const TC_H_MIN_EGRESS = 0xfff3;

// linux/pkt_cls.h: the bpf classifier and its verdicts
export const TCA_BPF_FD = 6;
export const TCA_BPF_NAME = 7;
export const TCA_BPF_FLAGS = 8;
export const TCA_BPF_FLAG_ACT_DIRECT = 1;
export const TC_ACT_UNSPEC = -1;
export const TC_ACT_SHOT = 2;

// linux/if_ether.h, in network byte order as tcm_info wants the protocol
export const ETH_P_ALL_BE = 0x0300;
export const ETH_P_IP_BE = 0x0008;
