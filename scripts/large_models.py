"""Cost of one prompt's score on a real-size model of a family, with random weights (no hub, no download).

    .venv/bin/python scripts/large_models.py --family sdxl [--dtype float32] [--json out.json]
    .venv/bin/python scripts/large_models.py --family sdxl --quick      # a seconds-long smoke run
    .venv/bin/python scripts/large_models.py --family sd3.5-medium [--quick]

Builds the family's denoiser and text encoders at their published sizes from configs, wraps them in a
memtest Checkpoint and scores one prompt (n=1, fd by default) through memtest's Scorer: the number
reported is what `pytest --memtest` would pay per prompt, and the peak resident memory of the process.
docs/performance.md records the runs. Long: minutes and ~20 GiB at SDXL size on a CPU.

`sd3.5-medium` is Stable Diffusion 3.5 Medium's MMDiT-X transformer at its published config (24 joint blocks
of width 1536, dual attention in blocks 0-12, RMS q/k norm; 2.24 B parameters as diffusers counts them,
128x128x16 latents) with CLIP-L and CLIP-G; without T5-XXL (4.8 B more parameters, 19 GB in float32), which
the SD3 family allows: T5's 256 tokens are then zeros, so the transformer's cost per step is the same, and T5
would run once per prompt to encode it, not in the metric's forwards. The score is at memtest's default flow
measurement (one guided Euler step from x_1, then the metric: 2 + 3 transformer forwards of batch 1 for fd).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

PROMPT = "a photo of a red digit"


def peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process: what the work cost, whatever else shares the cores."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return float(r.ru_utime + r.ru_stime)


def _clip(tokenizer: Any, hidden: int, layers: int, heads: int, inter: int, act: str, projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=hidden,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def build_sdxl(quick: bool) -> dict[str, Any]:
    """SDXL base 1.0's UNet (2.6 B parameters, 128x128x4 latents) and its two encoders (CLIP-L, bigG)."""
    from diffusers import UNet2DConditionModel

    from memtest.zoo.tiny import TinyConfig, build_scheduler, build_tokenizer

    tokenizer = build_tokenizer([PROMPT] * 4, vocab_size=400, max_length=77)
    if quick:  # the same layout, a hundred times smaller, for the smoke test
        unet_kw: dict[str, Any] = dict(
            sample_size=16, block_out_channels=(32, 64), transformer_layers_per_block=(1, 1),
            attention_head_dim=(2, 4), cross_attention_dim=64, addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        )  # fmt: skip
        enc = [(32, 1, 2, 64, "quick_gelu"), (32, 1, 2, 64, "gelu")]
    else:
        unet_kw = dict(
            sample_size=128, block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20), cross_attention_dim=2048, addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        )  # fmt: skip
        enc = [(768, 12, 12, 3072, "quick_gelu"), (1280, 32, 20, 5120, "gelu")]
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=4, layers_per_block=2, addition_embed_type="text_time",
        use_linear_projection=True, **unet_kw,
    )  # fmt: skip
    return {
        "unet": unet,
        "text_encoder": _clip(tokenizer, *enc[0], projection=False),
        "text_encoder_2": _clip(tokenizer, *enc[1], projection=True),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "scheduler": build_scheduler(TinyConfig()),
    }


def build_sd35_medium(quick: bool) -> dict[str, Any]:
    """SD3.5 Medium's transformer (2.24 B parameters, 128x128x16 latents) and its CLIP-L and CLIP-G, no T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from memtest.zoo.tiny import build_tokenizer

    tokenizer = build_tokenizer([PROMPT] * 4, vocab_size=400, max_length=77)
    if quick:  # the same layout (dual attention, q/k norm, zero T5 tokens), thousands of times smaller
        tr_kw: dict[str, Any] = dict(
            sample_size=16, num_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
            caption_projection_dim=32, pooled_projection_dim=64, pos_embed_max_size=16, dual_attention_layers=(0,),
        )  # fmt: skip
        enc = [(32, 1, 2, 64, "quick_gelu"), (32, 1, 2, 64, "gelu")]
    else:  # stabilityai/stable-diffusion-3.5-medium, transformer/config.json
        tr_kw = dict(
            sample_size=128, num_layers=24, attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
            caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
            dual_attention_layers=tuple(range(13)),
        )  # fmt: skip
        enc = [(768, 12, 12, 3072, "quick_gelu"), (1280, 32, 20, 5120, "gelu")]
    transformer = SD3Transformer2DModel(patch_size=2, in_channels=16, out_channels=16, qk_norm="rms_norm", **tr_kw)
    return {
        "transformer": transformer,
        "text_encoder": _clip(tokenizer, *enc[0], projection=True),
        "text_encoder_2": _clip(tokenizer, *enc[1], projection=True),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
    }


BUILDERS = {"sdxl": build_sdxl, "sd3.5-medium": build_sd35_medium}
#: The memtest family of each builder.
FAMILY = {"sdxl": "sdxl", "sd3.5-medium": "sd3"}


def run(family: str, dtype_name: str, method: str, quick: bool, threads: int | None) -> dict[str, Any]:
    import torch

    from memtest.detection.scoring import Scorer, ScoreSettings
    from memtest.models.checkpoint import Checkpoint, parse_dtype, place
    from memtest.models.families import family_named

    if threads:
        torch.set_num_threads(threads)
    dtype = parse_dtype(dtype_name)
    torch.manual_seed(0)
    start = time.perf_counter()
    components = BUILDERS[family](quick)
    params = {k: int(sum(p.numel() for p in m.parameters())) for k, m in components.items() if hasattr(m, "parameters")}
    ckpt = place(
        Checkpoint(
            name=f"{family}-random",
            path=Path(f"<{family}: random weights>"),
            family=family_named(FAMILY[family]),
            components=components,
            device=torch.device("cpu"),
            dtype=dtype,
            fingerprint=f"random-{family}",
            model_index={"force_zeros_for_empty_prompt": True},
        )
    )
    built = time.perf_counter() - start
    rss_built = peak_rss()
    scorer = Scorer(ckpt, ScoreSettings(n=1, method=method, batch_size=1))
    load_before = os.getloadavg()
    t0, c0 = time.perf_counter(), cpu_seconds()
    result = scorer.score([PROMPT])[0]
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {
        "family": family,
        "dtype": dtype_name,
        "method": method,
        "quick": quick,
        "threads": torch.get_num_threads(),
        "parameters": params,
        "latent_shape": list(ckpt.latent_shape),
        "build_seconds": round(built, 2),
        "peak_rss_after_build_gib": round(rss_built / 2**30, 2),
        "score_seconds": round(seconds, 2),
        "score_cpu_seconds": round(cpu, 1),
        "load_average_before_and_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "peak_rss_gib": round(peak_rss() / 2**30, 2),
        "score": result.score,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=sorted(BUILDERS), default="sdxl")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--method", default="fd")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="a tiny model of the same layout (smoke test)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    out = run(a.family, a.dtype, a.method, a.quick, a.threads)
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
