"""Conntrack five-tuple collision ("503 UF") analysis.

Modules are small and import nothing heavy at import time, so the CLI starts fast:
pyroute2 (sock_diag) and scapy (probes) are imported only inside the functions that need them.
"""
