"""Probe orchestration: the packet scripts (`*_probe.py`, stand-alone: stdlib + scapy) are files of this
package, so the wheel and the image carry them, and run in a subprocess inside the right namespace
(scapy's interface/route state is per process)."""
