"""Foreign rules: the extensions iptables-extensions(8) lists, as other software on a node writes them.

Each entry is loaded with `iptables -t TABLE -A CHAIN ARGS` beside Istio's rules. They are chosen
not to change the test's own traffic: filter-table rules sit mostly in FORWARD (a pod forwards
nothing) or only ACCEPT; rules in the tables explain walks (raw, mangle, nat) are guarded by a
TEST-NET source or destination (192.0.2.0/24, 2001:db8::/32), so a known part decides that they
do not apply. `SAVED` is what iptables-save 1.8.9 prints for entries (the parser's round trip).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

NET4, NET6 = "192.0.2.0/24", "2001:db8::/32"
SET4, SET6 = "mn-set4", "mn-set6"  # ipset sets the `set` match and SET target use (created per pod)
USER_CHAIN = "MN_FOREIGN"  # a user chain in filter and nat, for -g (goto) and plain jumps


@dataclass(frozen=True)
class Foreign:
    name: str
    table: str
    chain: str
    args: str  # shell words after `-A CHAIN`; {net} is the family's TEST-NET, {set} its ipset
    families: tuple[int, ...] = (4, 6)

    def argv(self, family: int) -> list[str]:
        text = self.args.format(net=NET4 if family == 4 else NET6, set=SET4 if family == 4 else SET6,
                                chain=USER_CHAIN, dst1=("192.0.2.11:80" if family == 4 else "[2001:db8::11]:80"))
        return ["-t", self.table, "-A", self.chain, *shlex.split(text)]


CORPUS: tuple[Foreign, ...] = (
    # tcp / udp
    Foreign("tcp-flags-all-none", "filter", "INPUT", "-p tcp --tcp-flags ALL NONE -j DROP"),
    Foreign("tcp-syn", "filter", "FORWARD", "-p tcp --syn -j ACCEPT"),
    Foreign("tcp-option", "filter", "FORWARD", "-p tcp --tcp-option 2 -j ACCEPT"),
    Foreign("tcpmss-clamp", "mangle", "FORWARD", "-p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"),
    Foreign("tcpmss-set", "mangle", "POSTROUTING",
            "-d {net} -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss 1400"),
    Foreign("tcp-syn-in-nat", "nat", "PREROUTING", "-s {net} -p tcp --syn -j RETURN"),
    Foreign("multiport-sports", "filter", "FORWARD", "-p tcp -m multiport --sports 1,2:4 -j DROP"),
    Foreign("multiport-ports", "filter", "FORWARD", "-p udp -m multiport ! --ports 5,6 -j DROP"),
    Foreign("sctp", "filter", "FORWARD", "-p sctp --dport 22 -j ACCEPT"),
    Foreign("dccp", "filter", "FORWARD", "-p dccp --dport 1 -j ACCEPT"),
    # payload, addresses, counters
    Foreign("string", "filter", "FORWARD", "-m string --algo bm --string 'GET /x y' -j DROP"),
    Foreign("string-hex", "filter", "FORWARD", "-m string --algo kmp --hex-string '|47 45 54|' -j DROP"),
    Foreign("u32", "filter", "FORWARD", "-m u32 --u32 '0>>22&0x3C@ 12>>26&0x3C@ 0&0xFF=0x45' -j DROP", (4,)),
    Foreign("statistic-random", "filter", "FORWARD", "-m statistic --mode random --probability 0.25 -j ACCEPT"),
    Foreign("statistic-nth", "mangle", "PREROUTING", "-s {net} -m statistic --mode nth --every 3 --packet 1 -j RETURN"),
    Foreign("addrtype", "filter", "FORWARD", "-m addrtype --dst-type LOCAL -j ACCEPT"),
    Foreign("iprange4", "filter", "FORWARD", "-m iprange --src-range 192.0.2.1-192.0.2.9 -j DROP", (4,)),
    Foreign("iprange6", "filter", "FORWARD", "-m iprange ! --dst-range 2001:db8::1-2001:db8::9 -j DROP", (6,)),
    Foreign("comment", "filter", "INPUT", "-m comment --comment 'a \"quoted\" comment, it'\"'\"'s spaced' -j ACCEPT"),
    Foreign("comment-in-nat", "nat", "OUTPUT", "-d {net} -m comment --comment 'kube: svc \"x\"' -j RETURN"),
    Foreign("mark-mask", "filter", "FORWARD", "-m mark --mark 0x10/0xf0 -j ACCEPT"),
    Foreign("connmark-mask", "mangle", "PREROUTING", "-s {net} -m connmark ! --mark 0x2/0x2 -j RETURN"),
    Foreign("hashlimit", "filter", "FORWARD",
            "-m hashlimit --hashlimit-upto 5/sec --hashlimit-mode srcip --hashlimit-name mnhl -j ACCEPT"),
    Foreign("recent", "filter", "FORWARD", "-m recent --rcheck --seconds 60 --name mnr -j DROP"),
    Foreign("set-match", "filter", "FORWARD", "-m set --match-set {set} src,dst -j DROP"),
    Foreign("set-target", "filter", "FORWARD", "-j SET --add-set {set} src"),
    Foreign("length", "filter", "FORWARD", "-m length --length 0:100 -j ACCEPT"),
    Foreign("ttl", "filter", "FORWARD", "-m ttl --ttl-gt 5 -j ACCEPT", (4,)),
    Foreign("hl", "filter", "FORWARD", "-m hl --hl-lt 5 -j ACCEPT", (6,)),
    Foreign("limit", "filter", "FORWARD", "-m limit --limit 3/min --limit-burst 7 -j ACCEPT"),
    Foreign("connlimit", "filter", "FORWARD",
            "-p tcp -m connlimit --connlimit-above 10 -j REJECT --reject-with tcp-reset"),
    Foreign("connbytes", "filter", "FORWARD",
            "-m connbytes --connbytes 10:100 --connbytes-dir both --connbytes-mode bytes -j ACCEPT"),
    Foreign("quota", "filter", "FORWARD", "-m quota --quota 1000 -j ACCEPT"),
    Foreign("conntrack-ctdir", "filter", "FORWARD", "-m conntrack --ctstate NEW --ctdir ORIGINAL -j ACCEPT"),
    Foreign("conntrack-ctorig", "nat", "PREROUTING", "-s {net} -m conntrack --ctstatus SEEN_REPLY -j RETURN"),
    Foreign("state", "filter", "FORWARD", "-m state --state INVALID -j DROP"),
    Foreign("pkttype", "filter", "FORWARD", "-m pkttype --pkt-type broadcast -j DROP"),
    Foreign("time", "filter", "FORWARD", "-m time --timestart 09:00 --timestop 17:00 --weekdays Mon,Tue -j DROP"),
    Foreign("tos", "filter", "FORWARD", "-m tos --tos 0x10 -j DROP"),
    Foreign("dscp", "filter", "FORWARD", "-m dscp --dscp 10 -j DROP"),
    Foreign("ecn", "filter", "FORWARD", "-p tcp -m ecn --ecn-tcp-cwr -j ACCEPT"),
    Foreign("socket", "mangle", "PREROUTING", "-s {net} -m socket --transparent -j RETURN"),
    Foreign("helper", "filter", "FORWARD", "-m helper --helper ftp -j ACCEPT"),
    Foreign("devgroup", "filter", "FORWARD", "-m devgroup --src-group 1 -j ACCEPT"),
    Foreign("cpu", "filter", "FORWARD", "-m cpu --cpu 0 -j ACCEPT"),
    Foreign("cgroup", "filter", "OUTPUT", "-m cgroup --path / -j ACCEPT"),
    Foreign("owner-socket-exists", "filter", "OUTPUT", "-m owner --socket-exists --uid-owner 0 -j ACCEPT"),
    Foreign("mac", "filter", "FORWARD", "-m mac --mac-source 00:11:22:33:44:55 -j ACCEPT"),
    Foreign("policy", "filter", "FORWARD", "-m policy --dir in --pol none -j ACCEPT"),
    Foreign("bpf", "filter", "FORWARD", "-m bpf --bytecode '4,48 0 0 9,21 0 1 6,6 0 0 1,6 0 0 0' -j ACCEPT", (4,)),
    Foreign("realm", "filter", "FORWARD", "-m realm --realm 1 -j ACCEPT", (4,)),
    Foreign("fragment", "filter", "FORWARD", "-f -j DROP", (4,)),
    Foreign("icmp", "filter", "FORWARD", "-p icmp --icmp-type echo-request -j ACCEPT", (4,)),
    Foreign("icmp6", "filter", "FORWARD", "-p ipv6-icmp --icmpv6-type 128 -j ACCEPT", (6,)),
    Foreign("frag6", "filter", "FORWARD", "-m frag --fragid 1 -j ACCEPT", (6,)),
    Foreign("ipv6header", "filter", "FORWARD", "-m ipv6header --header frag --soft -j ACCEPT", (6,)),
    Foreign("rt6", "filter", "FORWARD", "-m rt --rt-type 0 -j ACCEPT", (6,)),
    Foreign("hbh6", "filter", "FORWARD", "-m hbh --hbh-len 0 -j ACCEPT", (6,)),
    Foreign("eui64", "filter", "FORWARD", "-m eui64 -j ACCEPT", (6,)),
    Foreign("mh6", "filter", "FORWARD", "-p mh --mh-type 1 -j ACCEPT", (6,)),
    # targets
    Foreign("log-spaced-prefix", "filter", "FORWARD", "-j LOG --log-prefix 'mn drop: \"x\" ' --log-level 4"),
    Foreign("log-in-nat", "nat", "OUTPUT", "-d {net} -j LOG --log-prefix 'nat out ' --log-uid"),
    Foreign("nflog", "filter", "FORWARD", "-j NFLOG --nflog-group 3 --nflog-prefix 'mn x'"),
    Foreign("nfqueue", "filter", "FORWARD", "-s {net} -j NFQUEUE --queue-num 1 --queue-bypass"),
    Foreign("reject", "filter", "FORWARD", "-p tcp -s {net} -j REJECT --reject-with tcp-reset"),
    Foreign("ct-notrack", "raw", "PREROUTING", "-s {net} -p udp -j CT --notrack"),
    Foreign("ct-zone", "raw", "OUTPUT", "-d {net} -j CT --zone 7"),
    Foreign("notrack", "raw", "OUTPUT", "-d {net} -p udp --dport 9 -j NOTRACK"),
    Foreign("trace", "raw", "PREROUTING", "-s {net} -j TRACE"),
    Foreign("mark-xmark", "mangle", "PREROUTING", "-s {net} -j MARK --set-xmark 0x1/0xff"),
    Foreign("mark-or", "mangle", "OUTPUT", "-d {net} -j MARK --or-mark 0x4"),
    Foreign("mark-full", "mangle", "OUTPUT", "-d {net} -j MARK --set-mark 0x539"),
    Foreign("connmark-save-mask", "mangle", "PREROUTING", "-s {net} -j CONNMARK --save-mark --mask 0xff"),
    Foreign("connmark-set", "mangle", "PREROUTING", "-s {net} -j CONNMARK --set-mark 5"),
    Foreign("connmark-save", "mangle", "PREROUTING", "-p tcp -m mark --mark 0x1 -j CONNMARK --save-mark"),
    Foreign("tproxy-foreign", "mangle", "PREROUTING", "-s {net} -p tcp -j TPROXY --on-port 1 --tproxy-mark 0x1/0x1"),
    Foreign("ttl-target", "mangle", "PREROUTING", "-s {net} -j TTL --ttl-set 64", (4,)),
    Foreign("hl-target", "mangle", "PREROUTING", "-s {net} -j HL --hl-set 64", (6,)),
    Foreign("dscp-target", "mangle", "POSTROUTING", "-d {net} -j DSCP --set-dscp 1"),
    Foreign("tos-target", "mangle", "POSTROUTING", "-d {net} -j TOS --set-tos 0x10"),
    Foreign("checksum", "mangle", "POSTROUTING", "-d {net} -p udp -j CHECKSUM --checksum-fill"),
    Foreign("classify", "mangle", "POSTROUTING", "-d {net} -j CLASSIFY --set-class 1:1"),
    Foreign("audit", "filter", "FORWARD", "-j AUDIT --type accept"),
    Foreign("dnat", "nat", "PREROUTING", "-d {net} -p tcp -j DNAT --to-destination {dst1}"),
    Foreign("redirect-random", "nat", "OUTPUT", "-d {net} -p tcp -j REDIRECT --to-ports 9 --random"),
    Foreign("masquerade", "nat", "POSTROUTING", "-d {net} -j MASQUERADE --random"),
    Foreign("snat", "nat", "POSTROUTING", "-s {net} -j SNAT --to-source 192.0.2.1", (4,)),
    Foreign("goto-user-chain", "nat", "PREROUTING", "-s {net} -g {chain}"),
    Foreign("jump-user-chain", "filter", "FORWARD", "-j {chain}"),
    Foreign("user-chain-rule", "nat", "MN_FOREIGN", "-p tcp --tcp-flags ALL FIN -j RETURN"),
    Foreign("user-chain-rule-filter", "filter", "MN_FOREIGN", "-m string --algo bm --string '-j x' -j RETURN"),
)

# What iptables-save (1.8.9, nft and legacy alike) prints for rules of this kind: the parser's input.
SAVED: tuple[str, ...] = (
    "-A INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,PSH,ACK,URG NONE -j DROP",
    "-A INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j ACCEPT",
    "-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
    '-A INPUT -m string --string "GET /x y" --algo bm -j DROP',
    '-A INPUT -m u32 --u32 "0x0>>0x16&0x3c@0xc>>0x1a&0x3c@0x0&0xff=0x45" -j DROP',
    "-A INPUT -m statistic --mode random --probability 0.25000000000 -j ACCEPT",
    "-A INPUT -m addrtype --dst-type LOCAL -j ACCEPT",
    "-A INPUT -m iprange --src-range 10.0.0.1-10.0.0.9 -j ACCEPT",
    "-A INPUT -m comment --comment \"a \\\"quoted\\\" it\\'s comment\" -j ACCEPT",
    "-A INPUT -m comment --comment -x -j ACCEPT",
    "-A INPUT -m hashlimit --hashlimit-upto 5/sec --hashlimit-burst 5 --hashlimit-mode srcip --hashlimit-name mn "
    "-j ACCEPT",
    "-A INPUT -m recent --rcheck --seconds 60 --name mnr --mask 255.255.255.255 --rsource -j DROP",
    "-A INPUT -m set --match-set mnset src -j DROP",
    "-A INPUT -m length --length 0:100 -j ACCEPT",
    "-A INPUT -m ttl --ttl-gt 5 -j ACCEPT",
    '-A INPUT -j LOG --log-prefix "mn drop: "',
    '-A INPUT -j NFLOG --nflog-prefix "mn x" --nflog-group 3',
    "-A INPUT -f -j DROP",
    "-A INPUT ! -f -j DROP",
    "-A INPUT -p tcp -m multiport --sports 1,2 -j DROP",
    "-A INPUT -m conntrack --ctstate NEW --ctdir ORIGINAL -j ACCEPT",
    "-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT",
    "-A INPUT -p tcp -j REJECT --reject-with tcp-reset",
    "-A INPUT -m time --timestart 09:00:00 --timestop 17:00:00 --datestop 2038-01-19T03:14:07 -j DROP",
    "-A INPUT -m connlimit --connlimit-above 10 --connlimit-mask 32 --connlimit-saddr -j DROP",
    "-A INPUT -m tos --tos 0x10/0xff -j DROP",
    "-A INPUT -m socket --transparent -j ACCEPT",
    "-A INPUT -m state --state NEW -j ACCEPT",
    '-A INPUT -m cgroup --path "/" -j ACCEPT',
    "-A INPUT -j NFQUEUE --queue-num 1 --queue-bypass",
    "-A INPUT -p sctp -m sctp --dport 22 -j ACCEPT",
    "-A INPUT -p tcp -m tcp --tcp-option 2 -j ACCEPT",
    '-A INPUT -m bpf --bytecode "4,48 0 0 9,21 0 1 6,6 0 0 1,6 0 0 0" -j ACCEPT',
    "-A INPUT -j SET --add-set mnset src",
    "-A INPUT -m policy --dir in --pol none -j ACCEPT",
    "-A OUTPUT -m owner --socket-exists --uid-owner 0 -j ACCEPT",
    "-A PREROUTING -j CONNMARK --save-mark --nfmask 0xff --ctmask 0xff",
    "-A PREROUTING -j CONNMARK --set-xmark 0x5/0xffffffff",
    "-A PREROUTING -j TTL --ttl-set 64",
    "-A OUTPUT -j DSCP --set-dscp 0x01",
    "-A POSTROUTING -j CLASSIFY --set-class 0001:0001",
    "-A PREROUTING -p udp -j CT --notrack",
    "-A PREROUTING -j TRACE",
    "-A PREROUTING -p tcp -j DNAT --to-destination 10.1.1.1:80",
    "-A POSTROUTING -j MASQUERADE --random",
    "-A PREROUTING -s 192.0.2.0/24 -g MN_FOREIGN",
    "-A INPUT -m hl --hl-gt 5 -j ACCEPT",
    "-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT",
    "-A INPUT -m ipv6header --header ipv6-frag --soft -j ACCEPT",
    "-A INPUT -p mobility-header -m mh --mh-type 1 -j ACCEPT",
    "-A INPUT -m eui64 -j ACCEPT",
    "-A INPUT -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK SYN -j ACCEPT",
    "-A INPUT -p tcp -m tcp --dport 80 -m comment --comment \"web\" -j ACCEPT",
    "-A OUTPUT -p tcp -m mark --mark 0x1 -m string --string \"-m x\" --algo bm -j RETURN",
    "-A INPUT -m string --string \"unterminated --algo bm -j DROP",
)
