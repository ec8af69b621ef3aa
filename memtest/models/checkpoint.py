"""Load a text-to-image diffusion checkpoint for scoring (SPEC.md §1).

A checkpoint is a diffusers folder (`model_index.json`, `unet/`, `text_encoder/`, `tokenizer/`,
`scheduler/`, optional `vae/`), a `zoo:<name>` canary shipped with memtest, or a hub id that is already in
the local Hugging Face cache. Nothing is ever downloaded, weights load from safetensors unless the user
opts in to pickle, and remote code is never trusted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from memtest.errors import CheckpointError, option
from memtest.models.families import Component, Family, recognise
from memtest.models.families.base import Checkpoint, component_class, declared
from memtest.models.locate import WEIGHT_SUFFIXES, fingerprint, is_single_file, resolve_checkpoint

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


def _read_index(folder: Path) -> dict[str, Any]:
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
    return index


def _check_folder(folder: Path, family: Family, index: dict[str, Any], allow_pickle: bool) -> list[Component]:
    """The components to load, after checking each is declared, present and (by default) safetensors."""
    index_file = folder / "model_index.json"
    present = []
    for comp in family.components:
        if not declared(index, comp.name) or not (folder / comp.name).is_dir():
            if not comp.required:
                continue
            if not declared(index, comp.name):
                needed = ", ".join(c.name for c in family.components if c.required)
                raise CheckpointError(
                    f"'{index_file}' declares no '{comp.name}' component; a {family.title} checkpoint needs "
                    f"{needed}" + (" (the VAE is optional)." if any(not c.required for c in family.components) else ".")
                )
            raise CheckpointError(f"Checkpoint '{folder}' is missing its '{comp.name}/' folder.")
        present.append(comp)
        if not comp.weights:
            continue
        sub = folder / comp.name
        weights = [p for p in sub.iterdir() if p.suffix in WEIGHT_SUFFIXES]
        safe = [p for p in weights if p.suffix == ".safetensors"]
        if not weights:
            raise CheckpointError(f"'{sub}' holds no weight files (*.safetensors). Re-save the pipeline.")
        if not safe and not allow_pickle:
            names = ", ".join(sorted(p.name for p in weights))
            raise CheckpointError(
                f"'{sub}' has only pickle weights ({names}); unpickling can run arbitrary code, so memtest "
                "loads safetensors only. Convert with `pipe.save_pretrained(folder, safe_serialization=True)`, "
                f"or, if you trust this file, pass {option('allow_pickle', True)}."
            )
    return present


def _scheduler_class(index: dict[str, Any]) -> Any:
    import diffusers

    sched_name = str(index["scheduler"][1])
    sched_cls = getattr(diffusers, sched_name, None)
    if sched_cls is None or not hasattr(sched_cls, "from_pretrained") or "Scheduler" not in sched_name:
        raise CheckpointError(
            f"Component 'scheduler' is {sched_name!r}, not a diffusers scheduler. Check model_index.json."
        )
    return sched_cls


def _load_component(folder: Path, index: dict[str, Any], comp: Component, allow_pickle: bool) -> Any:
    if comp.name == "scheduler":
        return _scheduler_class(index).from_pretrained(folder, subfolder=comp.name)
    cls = component_class(index, comp, str(folder / "model_index.json"))
    if not comp.weights:  # tokenizers
        tok = cls.from_pretrained(folder, subfolder=comp.name)
        if len(tok) <= 2:
            raise CheckpointError(
                f"The tokenizer in '{folder / comp.name}' has only {len(tok)} tokens: it is degenerate "
                "(an offline hub load does this). Save a real tokenizer into the checkpoint."
            )
        return tok
    from memtest.models.loading import load_component

    # Strict: a component whose weights lack, add or reshape tensors is refused, never partially loaded.
    return load_component(folder, comp.name, cls, expected=comp.classes, allow_pickle=allow_pickle)


def load_checkpoint(
    path_or_id: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
    loras: Sequence[str | Path | Any] = (),
    config: str | Path | None = None,
) -> Checkpoint:
    """Load a diffusers text-to-image checkpoint for scoring.

    `path_or_id` is a local diffusers folder, `zoo:<name>` for a shipped canary, or a hub id already in
    the local cache. The model family (SD 1.x/2.x, SDXL, ...) is read from model_index.json. Weights load
    from safetensors only unless `allow_pickle=True`, and strictly: a component whose weights lack or add
    tensors is an error, never a partial load. `loras` are LoRA adapters ("PATH[:SCALE]" or
    `memtest.models.adapters.LoraSpec`) applied in order; they become part of the checkpoint's fingerprint. The
    device defaults to CUDA when available, else CPU; the dtype defaults to float32. Metrics are always
    computed in float32 whatever the model dtype.

    `path_or_id` may also be one original-format weights file (A1111/ComfyUI/kohya `.safetensors`) of a supported
    family: it loads through diffusers' `from_single_file` with the configs of `config`, a local diffusers folder of
    its base (else the base's snapshot in the local hub cache), strictly, and is fingerprinted by the file's bytes
    (memtest.models.single_file).
    """
    name, folder = resolve_checkpoint(path_or_id)
    single = is_single_file(folder)
    loaded: dict[str, Any] = {}
    if config is not None and not single:
        raise CheckpointError(
            f"{option('config')} is for single-file checkpoints, but '{folder}' is a folder with its own configs. "
            f"Drop {option('config')}, or pass the single .safetensors file as the checkpoint."
        )
    if single:
        from memtest.models.single_file import load_single_file

        family, loaded, index, _ = load_single_file(folder, config=config, allow_pickle=allow_pickle)
        present = [c for c in family.components if c.name in loaded]
    else:
        index = _read_index(folder)
        family = recognise(index, str(folder / "model_index.json"))
        present = _check_folder(folder, family, index, allow_pickle)
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"Device '{dev}' was requested but CUDA is not available here. Use device='cpu'.")
    dt = parse_dtype(dtype)
    specs: list[Any] = []
    if loras:
        from memtest.models.adapters import parse_lora

        specs = [parse_lora(x) for x in loras]
    components: dict[str, Any] = {}
    try:
        for comp in present:
            components[comp.name] = loaded[comp.name] if single else _load_component(folder, index, comp, allow_pickle)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"Could not load checkpoint '{folder}': {type(exc).__name__}: {exc}. "
            "Check that the folder was written by `save_pipeline`/`save_pretrained` and is complete."
        ) from exc
    ckpt = Checkpoint(
        name=name,
        path=folder,
        family=family,
        components=components,
        device=dev,
        dtype=dt,
        fingerprint=fingerprint(folder),
        model_index=index,
    )
    if specs:
        from memtest.models.adapters import adapters_fingerprint, apply_loras

        ckpt.adapters = apply_loras(family.pipeline(ckpt), specs, allow_pickle=allow_pickle)
        ckpt.fingerprint = adapters_fingerprint(ckpt.fingerprint, specs)
    place(ckpt)
    return ckpt


def place(ckpt: Checkpoint) -> Checkpoint:
    """Move the models to the checkpoint's device and dtype, in eval mode, frozen."""
    for m in ckpt.components.values():
        if not isinstance(m, torch.nn.Module):
            continue
        m.to(device=ckpt.device)
        if next(m.parameters()).dtype != ckpt.dtype:  # casting float32 -> float32 makes diffusers warn needlessly
            m.to(dtype=ckpt.dtype)
        m.eval()
        m.requires_grad_(False)
    return ckpt


__all__ = ["Checkpoint", "default_device", "load_checkpoint", "parse_dtype", "place"]
