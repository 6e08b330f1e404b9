"""Step 4: live state back into the rule model. Parsers of iptables-save and `nft -j` output, the live
read of a namespace, and the comparison of expected and live rules."""
