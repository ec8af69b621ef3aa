"""Model families: one module each, one interface (`base.Family`); `recognise` picks one from model_index.json.

Where a family lives: `sd.py` (Stable Diffusion 1.x/2.x), `sdxl.py` (SDXL), `sd3.py` (SD3/3.5), `flux.py`
(Flux.1), the last two over the flow-matching process in `flow.py`, and `pixart.py` (PixArt-Sigma). Adding
a family is one module and one line in `FAMILIES`; scoring, calibration identity, mitigation and generation
go through the interface and never branch on the family.
"""

from __future__ import annotations

from typing import Any

from memtest.errors import CheckpointError
from memtest.models.families.base import Component, Cond, Family, Process
from memtest.models.families.flux import Flux
from memtest.models.families.pixart import PixArtSigma
from memtest.models.families.sd import StableDiffusion
from memtest.models.families.sd3 import StableDiffusion3
from memtest.models.families.sdxl import StableDiffusionXL

#: Every family memtest audits, in recognition order.
FAMILIES: tuple[type[Family], ...] = (StableDiffusion, StableDiffusionXL, StableDiffusion3, Flux, PixArtSigma)


def supported_pipelines() -> list[str]:
    return [p for fam in FAMILIES for p in fam.pipelines]


def recognise(index: dict[str, Any], where: str) -> Family:
    """The family of a checkpoint from its model_index.json (never from folder names)."""
    name = index.get("_class_name")
    for fam in FAMILIES:
        if fam.recognises(index):
            fam.check_index(index, where)
            return fam()
    found = f"a {name}" if isinstance(name, str) and name else "no _class_name"
    raise CheckpointError(
        f"'{where}' declares {found} in model_index.json; memtest audits these pipelines: "
        f"{', '.join(supported_pipelines())}. Save the checkpoint as one of them (`pipe.save_pretrained`)."
    )


def family_named(name: str) -> Family:
    for fam in FAMILIES:
        if fam.name == name:
            return fam()
    raise CheckpointError(f"Unknown model family {name!r}. Known: {', '.join(f.name for f in FAMILIES)}.")


__all__ = ["FAMILIES", "Component", "Cond", "Family", "Process", "family_named", "recognise", "supported_pipelines"]
