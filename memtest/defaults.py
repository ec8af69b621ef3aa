"""Defaults shared by the CLI and the pytest plugin; importing this module costs nothing."""

DEFAULT_CHECKPOINT = "zoo:finetuned"
DEFAULT_CACHE_DIR = ".memtest_cache"
DEFAULT_FPR = 0.01
DEFAULT_MITIGATION_STEPS = 100  # SAIL's step budget per prompt
#: How `mitigate: true|copy` items choose x_T: SAIL moves it, resample keeps ordinary draws (memtest.mitigation).
MITIGATION_ITEM_METHODS = ("sail", "resample", "attention")
DEFAULT_MITIGATION_METHOD = "sail"
