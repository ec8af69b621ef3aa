"""Repository-wide pytest setup: memtest's own tests never touch the network."""

import os

# Model hubs are unreachable here and a hub lookup can hang: every test runs offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# The test processes load torch before any memtest run can make OpenMP's waits passive (memtest/threads.py),
# and in-process pytester runs then score with spinning threads beside the other xdist worker: the default-run
# test took 639 s that way instead of 68 s alone. Sleeping waits change no number, only who holds the core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = ("pytester",)
