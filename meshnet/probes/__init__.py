"""Probe orchestration: the packet scripts live in the repository's probes/ folder and run in a
subprocess inside the right namespace (scapy's interface/route state is per process)."""
