"""Repository-wide pytest setup: memtest's own tests never touch the network."""

import os

# Model hubs are unreachable here and a hub lookup can hang: every test runs offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

pytest_plugins = ("pytester",)
