"""`attention_entropy`: Ren et al., "Unveiling and Mitigating Memorization in Text-to-image Diffusion Models through
Cross Attention" (ECCV 2024; code: renjie3/MemAttn, `detect.py`, `read_results.py`, `MemAttn.py`).

The conditional branch's cross-attention probabilities, averaged over the query positions (pixels) per layer and
head (`memtest.detection.detectors.attention`), then over the heads (and layers) before the entropy
E = −Σ_tokens p log p over the text encoder's whole padded token sequence. Two variants (`variant`):

- `le` (default; their mode E): E of one layer, the fourth cross-attention layer in call order (their
  `layer_id = 3`: SD v1.4's down_blocks.1.attentions.1), at the first sampling step (`step_id = 0`), on x_T;
- `ae` (their mode D): all cross-attention layers averaged, E averaged over the last 10 of the 50 DDIM steps
  (their `step_id = 40..49`; the last 10 of `num_inference_steps` here), plus the change in the padding tokens'
  entropy: the same sum restricted to the tokens from the end token on (their `length - 1` onwards), its mean
  over those steps minus its value at the first step. The trajectory is the scorer's guided DDIM from x_T at
  `guidance_scale`.

Higher = more memorized (their scores enter the ROC with memorized = 1 as they are). Per generation; the prompt's
score is the mean over n (they ran one generation per prompt). SD family only (`attention.cross_attention_layers`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from memtest.detection.detectors.attention import cross_attention_layers, entropy, recording
from memtest.detection.detectors.base import Batch, Blocks, Detector
from memtest.errors import ScoringError
from memtest.models.families.base import DDPMProcess

if TYPE_CHECKING:
    import torch

#: Their single layer for LE: the fourth cross-attention call of a forward.
LE_LAYER = 3
#: Their AE window: the last this many sampling steps (40..49 of 50).
AE_LAST = 10
DEFAULT_VARIANT = "le"


class AttentionEntropy(Detector):
    name: ClassVar[str] = "attention_entropy"
    source: ClassVar[str] = "Ren et al., ECCV 2024 (renjie3/MemAttn)"

    def variant(self, blocks: Blocks) -> str:
        return blocks.settings.variant or DEFAULT_VARIANT

    def check(self, blocks: Blocks) -> None:
        layers = cross_attention_layers(blocks.ckpt, self.name)
        if self.variant(blocks) == "le" and len(layers) <= LE_LAYER:
            raise ScoringError(
                f"The {self.name} metric's LE variant reads the cross-attention layer #{LE_LAYER} in call order; "
                f"checkpoint {blocks.ckpt.name} has {len(layers)}. Use `variant='ae'` (all layers)."
            )
        if not isinstance(blocks.process, DDPMProcess):  # cross_attention_layers admits SD-style UNets only
            raise ScoringError(f"The {self.name} metric follows the DDIM schedule; {blocks.ckpt.name} has none.")
        if self.variant(blocks) == "ae" and blocks.settings.num_inference_steps <= AE_LAST:
            raise ScoringError(
                f"The {self.name} metric's AE variant averages the last {AE_LAST} sampling steps and compares them "
                f"with the first: it needs num_inference_steps > {AE_LAST}, got {blocks.settings.num_inference_steps}."
            )

    def identity(self, blocks: Blocks) -> dict[str, Any]:
        variant = self.variant(blocks)
        layers = cross_attention_layers(blocks.ckpt, self.name)
        s = blocks.settings
        return {
            "variant": variant,
            "layers": [layers[LE_LAYER]] if variant == "le" else "all cross-attention layers, mean",
            "steps": [0] if variant == "le" else f"last {AE_LAST} of num_inference_steps; padding delta vs step 0",
            "guidance_scale": s.guidance_scale if variant == "ae" else None,
            "attention": "conditional branch, mean over query positions, then heads (and layers), entropy over tokens",
            **blocks.process.identity(),
        }

    def prompt_lengths(self, blocks: Blocks, prompts: tuple[str, ...]) -> list[int]:
        """Tokens of each prompt with its start and end token, as the tokenizer truncates it (unpadded)."""
        tok = blocks.ckpt.tokenizer
        return [len(tok(p, max_length=tok.model_max_length, truncation=True)["input_ids"]) for p in prompts]

    def score(self, blocks: Blocks, batch: Batch) -> torch.Tensor:
        import torch

        process = blocks.process
        assert isinstance(process, DDPMProcess)
        s = blocks.settings
        variant = self.variant(blocks)
        x, c_c, c_0 = batch.x, batch.c_c, batch.c_0
        rows, prompts = x.shape[0], len(batch.prompts)
        schedule = [int(t) for t in process.scheduler.timesteps]
        last = set(range(len(schedule) - AE_LAST, len(schedule)))
        store: list[torch.Tensor] = []
        per_step: dict[int, torch.Tensor] = {}
        with recording(blocks.ckpt, store) as layers, torch.inference_mode():
            for k, t in enumerate(schedule):
                store.clear()
                o_c, o_0 = blocks.branches(x, t, c_c, c_0, first=k == 0, prompts=prompts)
                if len(store) != len(layers):
                    raise ScoringError(
                        f"Recorded {len(store)} cross-attention calls in one forward, expected {len(layers)}."
                    )
                cond = torch.stack([a[:rows] for a in store])  # (layers, rows, heads, tokens)
                if variant == "le":
                    return entropy(cond[LE_LAYER].mean(dim=1)).to(torch.float64)
                if k == 0 or k in last:
                    per_step[k] = cond.mean(dim=(0, 2))  # (rows, tokens)
                if k + 1 < len(schedule):
                    x = process.step(process.guide(o_c, o_0, s.guidance_scale), t, x.to(torch.float32))
        lengths = torch.tensor(self.prompt_lengths(blocks, batch.prompts)).repeat_interleave(s.n)
        tokens = next(iter(per_step.values())).shape[-1]
        padding = (torch.arange(tokens)[None, :] >= (lengths[:, None] - 1)).to(per_step[0].device)

        def pad_entropy(p: torch.Tensor) -> torch.Tensor:
            return entropy(p * padding)

        window = sorted(last)
        whole = torch.stack([entropy(per_step[k]) for k in window]).mean(dim=0)
        delta = torch.stack([pad_entropy(per_step[k]) for k in window]).mean(dim=0) - pad_entropy(per_step[0])
        return (whole + delta).to(torch.float64)


DETECTOR = AttentionEntropy()

__all__ = ["AE_LAST", "DETECTOR", "LE_LAYER", "AttentionEntropy"]
