"""`bright_ending`: Chen et al., "Exploring Local Memorization in Diffusion Models via Bright Ending Attention"
(ICLR 2025; code: chenchen-usyd/BE-PRSS, `detect_mem.py`, `controller.py`, `local_sd_pipeline.py`).

The end token's cross-attention at the final sampling step is a map of where the image is memorized; the
score-difference magnitude inside that map is the score.

- Walk the guided DDIM trajectory from x_T through all `num_inference_steps` (their 50, `guidance_scale` 7.5).
- At the final step (their `cur_step == 49`), take the conditional branch's cross-attention of the down-path
  layers at the highest resolution (their `down_cross` at 64 x 64: SD v1.4's down_blocks.0, two layers), mean over
  heads, then over those layers, at the end token (their `token_len - 1` of the tokenizer's unpadded ids): the
  mask m, one value per latent position (upsampled by nearest neighbour to the latent grid when those layers are
  coarser than it — not the case for SD v1/v2).
- The BE score at a step: ‖(ε_c − ε_0) ⊙ m‖₂ / mean(m) (the mask broadcast over the channels; their
  `text_noise_norm_masked`), averaged over the first `steps` steps of the same trajectory (their two passes use
  the same seed, so the same one).

Higher = more memorized. Per generation; the prompt's score is the mean over n (they ran 16 per prompt in the
paper's detection). SD family only (`attention.cross_attention_layers`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from memtest.detection.detectors.attention import cross_attention_layers, recording
from memtest.detection.detectors.base import Batch, Blocks, Detector
from memtest.errors import ScoringError
from memtest.models.families.base import DDPMProcess

if TYPE_CHECKING:
    import torch


class BrightEnding(Detector):
    name: ClassVar[str] = "bright_ending"
    source: ClassVar[str] = "Chen et al., ICLR 2025 (chenchen-usyd/BE-PRSS)"

    def check(self, blocks: Blocks) -> None:
        layers = cross_attention_layers(blocks.ckpt, self.name)
        if not any(n.startswith("down_blocks") for n in layers):
            raise ScoringError(
                f"The {self.name} metric's mask comes from the down path's cross-attention; checkpoint "
                f"{blocks.ckpt.name} has none there. Choose another metric."
            )
        if not isinstance(blocks.process, DDPMProcess):  # cross_attention_layers admits SD-style UNets only
            raise ScoringError(f"The {self.name} metric follows the DDIM schedule; {blocks.ckpt.name} has none.")

    def identity(self, blocks: Blocks) -> dict[str, Any]:
        s = blocks.settings
        return {
            "steps": s.steps,
            "timesteps": list(blocks.timesteps),
            "guidance_scale": s.guidance_scale,
            "mask": "end token, conditional cross-attention at the final step, down-path layers at the highest "
            "resolution, mean over heads and layers, nearest-upsampled to the latent grid",
            "magnitude": "||(eps_c - eps_0) * mask||_2 / mean(mask), mean over the first `steps` steps",
            **blocks.process.identity(),
        }

    def end_tokens(self, blocks: Blocks, prompts: tuple[str, ...]) -> list[int]:
        """The end token's position of each prompt: its unpadded token count (start and end included) − 1."""
        tok = blocks.ckpt.tokenizer
        return [len(tok(p, max_length=tok.model_max_length, truncation=True)["input_ids"]) - 1 for p in prompts]

    def score(self, blocks: Blocks, batch: Batch) -> torch.Tensor:
        import torch

        process = blocks.process
        assert isinstance(process, DDPMProcess)
        s = blocks.settings
        x, c_c, c_0 = batch.x, batch.c_c, batch.c_0
        rows, prompts = x.shape[0], len(batch.prompts)
        schedule = [int(t) for t in process.scheduler.timesteps]
        differences: list[torch.Tensor] = []
        store: list[torch.Tensor] = []
        calls: list[str] = []
        with torch.inference_mode():
            for k, t in enumerate(schedule):
                xf = x.to(torch.float32)
                if k + 1 < len(schedule):
                    o_c, o_0 = blocks.branches(x, t, c_c, c_0, first=k == 0, prompts=prompts)
                else:  # the final step: record the cross-attention maps
                    with recording(blocks.ckpt, store, calls, over=1):
                        o_c, o_0 = blocks.branches(x, t, c_c, c_0, first=k == 0, prompts=prompts)
                if k < s.steps:
                    differences.append(process.difference(o_c, o_0, xf, t))
                if k + 1 < len(schedule):
                    x = process.step(process.guide(o_c, o_0, s.guidance_scale), t, xf)
        down = [a[:rows] for a, name in zip(store, calls, strict=True) if name.startswith("down_blocks")]
        finest = max(a.shape[1] for a in down)
        maps = torch.stack([a for a in down if a.shape[1] == finest]).mean(dim=0)  # (rows, queries, tokens)
        ends = torch.tensor(self.end_tokens(blocks, batch.prompts)).repeat_interleave(s.n).to(maps.device)
        mask = maps[torch.arange(rows, device=maps.device), :, ends]  # (rows, queries)
        _, h, w = blocks.ckpt.latent_shape
        ratio = (h * w / finest) ** 0.5  # the layers' downsampling of the latent grid
        mh, mw = round(h / ratio), round(w / ratio)
        if mh * mw != finest:
            raise ScoringError(f"Cannot lay {finest} attention queries on the {h}x{w} latent grid.")
        mask = mask.view(rows, 1, mh, mw)
        if (mh, mw) != (h, w):
            mask = torch.nn.functional.interpolate(mask, size=(h, w), mode="nearest")
        mean = mask.flatten(1).mean(dim=1)
        values = [(d * mask).flatten(1).norm(dim=1) / mean for d in differences]
        return torch.stack(values).to(torch.float64).mean(dim=0)


DETECTOR = BrightEnding()

__all__ = ["DETECTOR", "BrightEnding"]
