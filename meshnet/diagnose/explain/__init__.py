"""`meshnet explain`: the packet, its walk through iptables or nftables rules, and the kernel trace."""
