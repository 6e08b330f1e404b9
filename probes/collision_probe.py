"""Moved into the package (meshnet/diagnose/probes/collision_probe.py) so that an installed wheel and the image
carry it; this path keeps working from a checkout."""

import runpy

if __name__ == "__main__":
    runpy.run_module("meshnet.diagnose.probes.collision_probe", run_name="__main__")
