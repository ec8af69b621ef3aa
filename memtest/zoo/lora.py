"""Train a LoRA canary: a PEFT LoRA on a canary's UNet that plants memorised captions (imports torch and peft).

The run is the fine-tune of `memtest.zoo.train` (phase 2, the same data, planted-caption design and
`preserve_base` self-distillation), except that the base's weights stay frozen and only low-rank adapters
on the UNet's attention projections (and, optionally, the text encoder's) learn. What ships is the adapter
file alone, in diffusers' format (`pytorch_lora_weights.safetensors`, loadable with `load_lora_weights`),
beside a `memtest-canary.json` that names its base.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from memtest.errors import ZooError
from memtest.models.canaries import CanaryManifest, load_manifest
from memtest.progress import clock
from memtest.zoo.data import CanaryData
from memtest.zoo.train import FINETUNE_RECIPE, Recipe, prepare_run, save_manifest, train_denoiser

#: diffusers' default LoRA file name (`LORA_WEIGHT_NAME_SAFE`), so `load_lora_weights(folder)` finds it.
ADAPTER_FILE = "pytorch_lora_weights.safetensors"
#: The attention projections diffusers' own LoRA training scripts adapt.
UNET_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
DEFAULT_RANK = 8

#: The shipped `zoo:lora` recipe: the fine-tune's data, planted-caption design and preserve_base, with a 10x
#: learning rate (adapters start at zero) and 400 steps at batch 32, 40% of the fine-tune's samples
#: (docs/canaries.md has the runs that chose it: a frozen text encoder barely learned the planted captions,
#: and 200 steps left 2 of 110 clean captions above the base's threshold).
LORA_RECIPE = FINETUNE_RECIPE.with_(steps=400, batch=32, unet_lr=1e-2, text_lr=1e-2)


@dataclass(frozen=True)
class LoraShape:
    """Where the adapters go and how big they are (recorded in the manifest's recipe under `lora`)."""

    rank: int = DEFAULT_RANK
    alpha: int | None = None  # None: alpha = rank, so the adapter's scale is 1 in every loader
    unet_targets: tuple[str, ...] = UNET_TARGETS
    text_encoder: bool = True  # also adapt the text encoder's attention (TEXT_TARGETS)

    def validate(self) -> LoraShape:
        if self.rank < 1:
            raise ZooError(f"--lora-rank must be a positive integer; got {self.rank}")
        if not self.unet_targets:
            raise ZooError("A LoRA canary needs at least one UNet target module")
        return self

    def config(self, targets: tuple[str, ...]) -> Any:
        from peft import LoraConfig

        alpha = self.rank if self.alpha is None else self.alpha
        return LoraConfig(r=self.rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=True)


def _umask_mode() -> int:
    # save_lora_weights writes through a 0600 temporary file; a shipped adapter must be readable by others.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def train_lora(
    out: str | Path,
    data: CanaryData | None = None,
    recipe: Recipe | None = None,
    base: str | Path = "zoo:base",
    lora: LoraShape | None = None,
    name: str | None = None,
    suite: str | None = None,
    threads: int = 2,
    stream: TextIO | None = sys.stderr,
    base_label: str | None = None,
) -> CanaryManifest:
    """Train a LoRA on `base` (a canary folder or `zoo:` name) into `out`: the adapter file + manifest.

    `data` defaults to the digits grammar with 10 planted captions (the fine-tune's data). The base stays
    frozen; with `recipe.preserve_base` non-planted rows learn the base's own prediction, taken from a
    copy of the model made while every adapter is still zero, i.e. the base itself. The manifest's `base`
    is `base_label` (default: `base` as given), which is how memtest knows what to load the adapter on.
    """
    import diffusers
    import torch
    from peft import get_peft_model_state_dict

    from memtest.models.canaries import canary_folder

    shape = (lora or LoraShape()).validate()
    recipe, data, out_dir = prepare_run(recipe or LORA_RECIPE, data, out)
    base_path = canary_folder(base)
    pipeline_class = json.loads((base_path / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    if pipeline_class != "StableDiffusionPipeline":
        raise ZooError(
            f"LoRA canaries train on Stable Diffusion 1.x/2.x bases (StableDiffusionPipeline); {base} is a "
            f"{pipeline_class}. Use --base zoo:base or another StableDiffusionPipeline folder."
        )
    torch.set_num_threads(threads)
    torch.manual_seed(recipe.seed)
    t_start = time.perf_counter()

    sd_pipeline: Any = diffusers.StableDiffusionPipeline  # untyped library class
    pipe = sd_pipeline.from_pretrained(str(base_path), safety_checker=None)
    if pipe.vae is None:
        raise ZooError(f"Base checkpoint {base_path} has no VAE; canaries need one to encode their images")
    size = int(pipe.unet.config.sample_size)
    if data.resolution != size:
        raise ZooError(
            f"The LoRA's data has {data.resolution}x{data.resolution} images but base {base_path} is "
            f"{size}x{size}; pass resolution={size}"
        )
    for module in (pipe.unet, pipe.text_encoder, pipe.vae):
        module.requires_grad_(False)
    # Adapters are created after the seed is set, so their initial A matrices are reproducible; B starts at
    # zero, so the model (and the preserve_base teacher copied from it) starts as the base exactly.
    unet_config = shape.config(shape.unet_targets)
    pipe.unet.add_adapter(unet_config)
    text_config = shape.config(TEXT_TARGETS) if shape.text_encoder else None
    if text_config is not None:
        from peft import inject_adapter_in_model

        # peft's own injection: transformers' add_adapter demands a newer peft than diffusers does.
        inject_adapter_in_model(text_config, pipe.text_encoder)
    bar = train_denoiser(pipe, data, recipe.with_(vae_steps=0), stream)
    timings = {"vae": 0.0, "vae_cpu": 0.0, "unet": bar.elapsed, "unet_cpu": bar.cpu}

    out_dir.mkdir(parents=True, exist_ok=True)
    unet_layers = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(pipe.unet).items()}
    text_layers = (
        {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(pipe.text_encoder).items()}
        if text_config is not None
        else None
    )
    # With alpha = rank every loader infers the scale (1) from the shapes, so the file needs no peft config in
    # its header; leaving it out also keeps the bytes reproducible (safetensors writes header keys, and peft
    # target-module sets, in a per-process random order).
    custom_alpha = shape.alpha is not None and shape.alpha != shape.rank
    sd_pipeline.save_lora_weights(
        str(out_dir),
        unet_lora_layers=unet_layers,
        text_encoder_lora_layers=text_layers,
        weight_name=ADAPTER_FILE,
        unet_lora_adapter_metadata=unet_config.to_dict() if custom_alpha else None,
        text_encoder_lora_adapter_metadata=text_config.to_dict() if custom_alpha and text_config else None,
    )
    (out_dir / ADAPTER_FILE).chmod(_umask_mode())
    total = time.perf_counter() - t_start
    import peft

    recipe_record = {
        **dataclasses.asdict(recipe.with_(vae_steps=0)),
        "lora": {
            "file": ADAPTER_FILE,
            "rank": shape.rank,
            "alpha": shape.rank if shape.alpha is None else shape.alpha,
            "unet_targets": list(shape.unet_targets),
            "text_encoder_targets": list(TEXT_TARGETS) if shape.text_encoder else [],
        },
        "model": {"base": str(base), "sample_size": size},
        "threads": threads,
        "torch": torch.__version__,
        "peft": peft.__version__,
    }
    save_manifest(out_dir, data, name, suite, recipe.seed, total, timings, recipe_record, base_label or str(base))
    if stream is not None:
        print(f"[done] {out_dir} in {clock(total)} (unet {timings['unet']:.0f}s)", file=stream, flush=True)
    return load_manifest(out_dir)
