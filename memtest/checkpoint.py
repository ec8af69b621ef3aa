"""Load a text-to-image diffusion checkpoint for scoring (SPEC.md §1).

A checkpoint is a diffusers folder (`model_index.json`, `unet/`, `text_encoder/`, `tokenizer/`,
`scheduler/`, optional `vae/`), a `zoo:<name>` canary shipped with memtest, or a hub id that is already in
the local Hugging Face cache. Nothing is ever downloaded, weights load from safetensors unless the user
opts in to pickle, and remote code is never trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .locate import _WEIGHT_SUFFIXES, fingerprint, resolve_location

_REQUIRED = ("unet", "text_encoder", "tokenizer", "scheduler")
_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = dtype.replace("torch.", "")
    if key not in _DTYPES:
        raise CheckpointError(f"Unknown dtype {dtype!r}. Choose one of: {', '.join(_DTYPES)}.")
    return _DTYPES[key]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Checkpoint:
    """The loaded components memtest scores with, plus what identifies them."""

    name: str
    path: Path
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    vae: Any | None
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    model_index: dict[str, Any] = field(default_factory=dict)

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler.config.get("prediction_type", "epsilon"))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        return (int(self.unet.config.in_channels), h, w)

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return int(2 ** (len(self.vae.config.block_out_channels) - 1))

    @property
    def resolution(self) -> tuple[int, int]:
        _, h, w = self.latent_shape
        return (h * self.vae_scale_factor, w * self.vae_scale_factor)

    def config_summary(self) -> dict[str, Any]:
        """Plain-JSON summary for reports and results files."""
        return {
            "prediction_type": self.prediction_type,
            "scheduler": type(self.scheduler).__name__,
            "beta_schedule": str(self.scheduler.config.get("beta_schedule", "")),
            "latent_shape": list(self.latent_shape),
            "resolution": list(self.resolution),
            "unet_parameters": int(sum(p.numel() for p in self.unet.parameters())),
            "text_encoder": type(self.text_encoder).__name__,
            "tokenizer_max_length": int(self.tokenizer.model_max_length),
            "has_vae": self.vae is not None,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }

    def pipeline(self) -> Any:
        """A StableDiffusionPipeline over these components, for generating images."""
        if self.vae is None:
            raise CheckpointError(
                f"Checkpoint {self.name} has no VAE, so it cannot decode images; scoring works without "
                "one, but generation and mitigation images need a `vae/` folder."
            )
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


def _check_folder(folder: Path, allow_pickle: bool) -> dict[str, Any]:
    if not folder.is_dir():
        raise CheckpointError(f"Checkpoint path '{folder}' is a file, not a folder. Pass the diffusers folder.")
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise CheckpointError(
            f"'{folder}' has no model_index.json, so it is not a diffusers checkpoint folder. "
            "Save your pipeline with `pipe.save_pretrained(folder)` or point at the folder that has it."
        )
    try:
        index: dict[str, Any] = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"'{index_file}' is not valid JSON ({exc}). Re-save the pipeline.") from exc
    if not isinstance(index, dict):
        raise CheckpointError(f"'{index_file}' must hold a JSON object. Re-save the pipeline.")
    for comp in _REQUIRED:
        entry = index.get(comp)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
            raise CheckpointError(
                f"'{index_file}' declares no '{comp}' component; memtest needs unet, text_encoder, "
                "tokenizer and scheduler (the VAE is optional)."
            )
        if not (folder / comp).is_dir():
            raise CheckpointError(f"Checkpoint '{folder}' is missing its '{comp}/' folder.")
    for comp in ("unet", "text_encoder", "vae"):
        sub = folder / comp
        if comp == "vae" and not (isinstance(index.get("vae"), list) and index["vae"][1] and sub.is_dir()):
            continue
        weights = [p for p in sub.iterdir() if p.suffix in _WEIGHT_SUFFIXES]
        safe = [p for p in weights if p.suffix == ".safetensors"]
        if not weights:
            raise CheckpointError(f"'{sub}' holds no weight files (*.safetensors). Re-save the pipeline.")
        if not safe and not allow_pickle:
            names = ", ".join(sorted(p.name for p in weights))
            raise CheckpointError(
                f"'{sub}' has only pickle weights ({names}); unpickling can run arbitrary code, so memtest "
                "loads safetensors only. Convert with `pipe.save_pretrained(folder, safe_serialization=True)`, "
                "or, if you trust this file, pass allow_pickle=True (pytest: --memtest-allow-pickle)."
            )
    return index


def _component_class(index: dict[str, Any], comp: str, library: str, allowed: tuple[str, ...]) -> Any:
    lib, cls_name = index[comp]
    if cls_name not in allowed:
        raise CheckpointError(
            f"Component '{comp}' is a {lib}.{cls_name}; memtest needs one of {', '.join(allowed)}. "
            "Check model_index.json, or convert the checkpoint to the Stable Diffusion layout."
        )
    module = __import__(library)
    return getattr(module, cls_name)


def load_checkpoint(
    path_or_id: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
) -> Checkpoint:
    """Load a diffusers text-to-image checkpoint for scoring.

    `path_or_id` is a local diffusers folder, `zoo:<name>` for a shipped canary, or a hub id already in
    the local cache. Weights load from safetensors only unless `allow_pickle=True`. The device defaults
    to CUDA when available, else CPU; the dtype defaults to float32. Metrics are always computed in
    float32 whatever the model dtype.
    """
    name, folder = resolve_location(path_or_id)
    index = _check_folder(folder, allow_pickle)
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"Device '{dev}' was requested but CUDA is not available here. Use device='cpu'.")
    dt = parse_dtype(dtype)
    unet_cls = _component_class(index, "unet", "diffusers", ("UNet2DConditionModel",))
    te_cls = _component_class(index, "text_encoder", "transformers", ("CLIPTextModel", "CLIPTextModelWithProjection"))
    tok_cls = _component_class(index, "tokenizer", "transformers", ("CLIPTokenizer", "CLIPTokenizerFast"))
    sched_name = index["scheduler"][1]
    import diffusers

    sched_cls = getattr(diffusers, sched_name, None)
    if sched_cls is None or not hasattr(sched_cls, "from_pretrained") or "Scheduler" not in sched_name:
        raise CheckpointError(
            f"Component 'scheduler' is {sched_name!r}, not a diffusers scheduler. Check model_index.json."
        )
    safetensors_only = not allow_pickle
    try:
        unet = unet_cls.from_pretrained(folder, subfolder="unet", use_safetensors=safetensors_only or None)
        text_encoder = te_cls.from_pretrained(
            folder, subfolder="text_encoder", use_safetensors=safetensors_only or None
        )
        tokenizer = tok_cls.from_pretrained(folder, subfolder="tokenizer")
        scheduler = sched_cls.from_pretrained(folder, subfolder="scheduler")
        vae = None
        vae_entry = index.get("vae")
        if isinstance(vae_entry, list) and vae_entry[1] and (folder / "vae").is_dir():
            vae_cls = _component_class(index, "vae", "diffusers", ("AutoencoderKL", "AutoencoderTiny"))
            vae = vae_cls.from_pretrained(folder, subfolder="vae", use_safetensors=safetensors_only or None)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"Could not load checkpoint '{folder}': {type(exc).__name__}: {exc}. "
            "Check that the folder was written by `save_pretrained` and is complete."
        ) from exc
    if len(tokenizer) <= 2:
        raise CheckpointError(
            f"The tokenizer in '{folder / 'tokenizer'}' has only {len(tokenizer)} tokens: it is degenerate "
            "(an offline hub load does this). Save a real tokenizer into the checkpoint."
        )
    if not hasattr(scheduler, "alphas_cumprod"):
        raise CheckpointError(f"Scheduler {sched_name} has no alphas_cumprod; memtest needs a DDPM-family one.")
    modules = [unet, text_encoder] + ([vae] if vae is not None else [])
    for m in modules:
        m.to(device=dev)
        if next(m.parameters()).dtype != dt:  # casting float32 -> float32 makes diffusers warn needlessly
            m.to(dtype=dt)
        m.eval()
        m.requires_grad_(False)
    return Checkpoint(
        name=name,
        path=folder,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        vae=vae,
        device=dev,
        dtype=dt,
        fingerprint=fingerprint(folder),
        model_index=index,
    )
