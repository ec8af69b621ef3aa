"""Cross-attention through memtest.detection.attention, and Ren et al.'s mitigation (memtest.mitigation.attention)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CAPTION = "ember poster of 4"


@pytest.fixture(scope="module")
def mixture() -> Any:
    from memtest.detection.scoring import Scorer
    from memtest.detection.settings import ScoreSettings
    from memtest.models.checkpoint import load_checkpoint

    return Scorer(load_checkpoint("zoo:mixture", device="cpu"), ScoreSettings(n=4))


def test_the_edited_processor_computes_the_models_attention_and_is_removed_after(mixture: Any) -> None:
    """With an edit that changes nothing, the outputs equal the model's own (SDPA) to float rounding, on every
    cross-attention module; after the block the model's processors are back, bit for bit."""
    from memtest.mitigation.attention import edited_cross_attention

    x = mixture.noise([0, 1])
    cond = mixture.embed([CAPTION] * 2)
    t = mixture.timesteps[0]
    before = mixture.forward(x, t, cond)
    seen: list[tuple[int, ...]] = []

    def keep(logits: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(logits.shape))
        return logits

    with edited_cross_attention(mixture.ckpt.denoiser, keep, "the test") as names:
        inside = mixture.forward(x, t, cond)
    tokens = mixture.ckpt.tokenizer.model_max_length  # 16 on the tiny canary
    assert len(names) == 4 and len(seen) == 4 and all(s[0] == 2 and s[-1] == tokens for s in seen)
    assert (inside - before).abs().max() < 1e-5  # the math path, not the fused kernel: rounding only
    assert torch.equal(mixture.forward(x, t, cond), before)


def test_ren_edit_scales_the_start_token_in_the_conditional_rows_and_masks_the_padding() -> None:
    from memtest.mitigation.attention import ren_edit

    null = torch.zeros(1, 6, 3)
    text = torch.stack([torch.ones(6, 3), torch.zeros(6, 3)])  # a conditional row, then an unconditional one
    logits = torch.full((2, 2, 5, 6), 2.0)
    out = ren_edit(null, keep=4, start_scale=1.25)(logits, text)
    assert torch.equal(out[0, :, :, 0], torch.full((2, 5), 2.5)) and torch.equal(
        out[1, :, :, 0], torch.full((2, 5), 2.0)
    )
    assert torch.isinf(out[..., 4:]).all() and torch.equal(out[..., 1:4], logits[..., 1:4])
    assert torch.equal(logits, torch.full((2, 2, 5, 6), 2.0))  # the input is not edited in place


def test_attention_mitigation_on_the_mixture_canary_lowers_copies(mixture: Any) -> None:
    """Ren et al.'s released setting on ember (4/4 copies at the detector's seeds): fewer copies of the planted image
    after, through `mitigate(..., "attention")`, with the settings recorded."""
    from memtest.mitigation import mitigate

    m = mitigate(mixture, CAPTION, "attention", threshold=0.0094)
    assert m.method == "attention" and m.details == {"start_scale": 1.25, "mask_summary": True, "kept_tokens": 6}
    assert m.copy_before is not None and m.copy_after is not None
    assert m.copy_before["copies"] == 4 and m.copy_after["copies"] < m.copy_before["copies"]
    assert m.sharpness_after != m.sharpness_before and m.images_after is not None


def test_families_without_cross_attention_or_a_start_token_are_refused(tmp_path: Path) -> None:
    from memtest.errors import MitigationError
    from memtest.mitigation import mitigate
    from memtest.zoo.tiny import save_pipeline
    from memtest.zoo.tiny_pixart import build_pixart_sigma_pipeline

    with pytest.raises(MitigationError, match=r"no cross-attention modules .* joint attention"):
        mitigate("zoo:flow-base", "aurora poster of 0", "attention", threshold=1.0, images=False)
    pixart = save_pipeline(build_pixart_sigma_pipeline(["a red digit"] * 3), tmp_path / "pixart")
    with pytest.raises(MitigationError, match="puts no start token first"):
        mitigate(str(pixart), "a red digit", "attention", threshold=1.0, images=False)


def test_the_gate_runs_attention_for_mitigate_items() -> None:
    """mitigation_method=attention: the gate's `mitigate` item is mitigated with Ren et al.'s edit at the calibrated
    threshold and its entry says so; an unknown method names the choices in the caller's spelling."""
    from memtest import audit
    from memtest.audit.gate import run_mitigation
    from memtest.errors import MemtestError

    engine = audit.Engine(audit.config_from_values({"checkpoint": "zoo:mixture", "mitigation_method": "attention"}))
    case = audit.AuditCase("s", "1", "ember", CAPTION, "memorized", mitigate=True)
    record, entry = run_mitigation(engine, case, [])
    assert entry["method"] == "attention" and entry["prompt"] == CAPTION
    assert entry["threshold"] == engine.calibration()[0].threshold
    assert record["kind"] == "mitigate" and record["outcome"] in ("passed", "failed")
    with pytest.raises(MemtestError, match="Choose one of: sail, resample, attention"):
        audit.config_from_values({"mitigation_method": "atention"})
