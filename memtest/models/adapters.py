"""LoRA adapters on a loaded base checkpoint (../shared/FAMILIES.md §4).

The audit's subject is then base + adapters at their scales. `parse_lora` reads `PATH[:SCALE]`,
`apply_loras` loads adapters through diffusers' own loaders with the PEFT backend (diffusers/PEFT and
kohya/A1111 safetensors) and fails closed unless every adapter tensor landed in the model, and
`adapters_fingerprint` extends the base's fingerprint with each adapter's bytes and scale. torch and
diffusers are imported only inside `apply_loras`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memtest.errors import CheckpointError, MemtestError, option
from memtest.models.locate import PICKLE_SUFFIXES, WEIGHT_SUFFIXES, file_sha256

#: Adapters are named memtest_0, memtest_1, ... in the order given.
ADAPTER_PREFIX = "memtest_"
#: The name diffusers' `save_lora_weights` gives the file; preferred when a folder is passed.
ADAPTER_FILE = "pytorch_lora_weights.safetensors"
# diffusers treats a file as kohya/A1111 exactly when every key starts with one of these.
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_FIX = "Load the adapter on the base checkpoint it was trained for."


@dataclass(frozen=True)
class LoraSpec:
    """One adapter file and the scale it is applied at (1.0: as trained; 0.0: no effect)."""

    path: Path
    scale: float = 1.0

    def __str__(self) -> str:
        return f"{self.path}:{self.scale:g}"


def _adapter_file(folder: Path, shown: str) -> Path:
    """The one adapter file in a folder (diffusers' `pytorch_lora_weights.safetensors` first)."""
    if (folder / ADAPTER_FILE).is_file():
        return folder / ADAPTER_FILE
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
    safe = [p for p in weights if p.suffix.lower() == ".safetensors"]
    for group in (safe, weights):
        if len(group) == 1:
            return group[0]
    found = ", ".join(p.name for p in weights) or "no weight files"
    raise CheckpointError(
        f"LoRA adapter folder '{shown}' ({folder}) holds {found}; memtest needs exactly one adapter file there. "
        "Pass the adapter file itself (PATH[:SCALE])."
    )


def parse_lora(text: str | Path | LoraSpec) -> LoraSpec:
    """`PATH[:SCALE]` (or a Path, or a LoraSpec) -> LoraSpec with an existing adapter file.

    The scale follows the last colon only when it parses as a finite float, so paths with colons and
    `zoo:lora` still work. PATH may be a `zoo:` adapter canary or a folder holding one adapter file.
    """
    if isinstance(text, LoraSpec):
        raw, scale = str(text.path), float(text.scale)
    elif isinstance(text, Path):
        raw, scale = str(text), 1.0
    else:
        raw, scale = str(text).strip(), 1.0
        head, sep, tail = raw.rpartition(":")
        if sep and head:
            try:
                scale = float(tail)
                raw = head
            except ValueError:
                pass  # the colon belongs to the path (zoo:lora, C:\..., a:b.safetensors)
    if not math.isfinite(scale):
        raise CheckpointError(f"LoRA adapter '{text}' has scale {scale}; give a finite number, e.g. {raw}:0.8.")
    if raw.startswith("zoo:"):
        from memtest.models.canaries import resolve_zoo

        try:
            path = resolve_zoo(raw)
        except MemtestError as exc:
            raise CheckpointError(f"LoRA adapter '{raw}': {exc}") from exc
    else:
        path = Path(raw).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"LoRA adapter '{raw}' does not exist ({path.resolve()}). Pass the adapter file as PATH or PATH:SCALE "
            "(e.g. my-lora.safetensors:0.8), or a folder that holds one adapter file."
        )
    if path.is_dir():
        path = _adapter_file(path, raw)
    return LoraSpec(path.resolve(), scale + 0.0)  # + 0.0 turns -0.0 into 0.0: the same model, one identity


def declared_base(spec: LoraSpec) -> str | None:
    """The base a memtest canary adapter says it was trained on (its manifest's `base`), else None."""
    from memtest.models.canaries import MANIFEST_NAME, load_manifest

    manifest = spec.path.parent / MANIFEST_NAME
    return load_manifest(manifest).base if manifest.is_file() else None


def adapters_fingerprint(base_fingerprint: str, specs: Sequence[LoraSpec]) -> str:
    """The identity of base + adapters: sha256 over the base's fingerprint and, in order, each adapter's
    sha256 and scale. No adapters: the base's fingerprint itself, so base calibrations keep matching. An
    adapter at scale 0 scores like the base but is still a different subject (its fingerprint differs)."""
    if not specs:
        return base_fingerprint
    digest = hashlib.sha256(b"memtest-adapters/1\0" + base_fingerprint.encode() + b"\0")
    for spec in specs:
        digest.update(file_sha256(spec.path).encode() + b"\0" + repr(float(spec.scale) + 0.0).encode() + b"\0")
    return digest.hexdigest()


# --- loading ----------------------------------------------------------------------------------------------


def _raw_keys(path: Path, pickled: bool) -> list[str]:
    if pickled:
        import torch

        obj = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(obj, dict):
            raise CheckpointError(f"LoRA adapter {path} holds a {type(obj).__name__}, not a state dict of tensors.")
        return [str(k) for k in obj]
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"LoRA adapter {path} is not a readable safetensors file ({exc}). Re-save it with "
            "`save_lora_weights` or safetensors."
        ) from exc


class _Quiet(logging.Filter):
    """Keeps diffusers' loader messages that memtest turns into its own error (or checks itself) off stderr."""

    NOTES = ("No LoRA keys associated to", "unexpected keys", "missing keys", "was unsuccessful")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(note in record.getMessage() for note in self.NOTES)


class _Warnings(logging.Handler):
    """Collects diffusers' warnings about adapter keys it did not use (a second line of defence)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "unexpected keys" in text or "missing keys" in text:
            self.messages.append(text)


@contextmanager
def _capture(pipe: Any) -> Iterator[tuple[dict[str, Any], _Warnings]]:
    """Records the state dict diffusers' `load_lora_weights` derives from the file (after its own kohya
    conversion) by shadowing the pipeline's `lora_state_dict` for the duration, and its key warnings."""
    seen: dict[str, Any] = {}
    original = pipe.lora_state_dict

    def recording(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        seen["state_dict"] = out[0]
        return out

    handler, quiet = _Warnings(), _Quiet()
    logger = logging.getLogger("diffusers")
    printers = list(logger.handlers)
    for h in printers:
        h.addFilter(quiet)
    logger.addHandler(handler)
    pipe.lora_state_dict = recording
    try:
        yield seen, handler
    finally:
        logger.removeHandler(handler)
        for h in printers:
            h.removeFilter(quiet)
        del pipe.lora_state_dict


def _expected_modules(component: str, keys: dict[str, Any]) -> tuple[set[str], int]:
    """Module paths an adapter's keys for one component target, in diffusers' own PEFT naming, and the rank."""
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    if component.startswith("text_encoder"):  # what diffusers' _load_lora_into_text_encoder does
        peft_keys = convert_state_dict_to_peft(convert_state_dict_to_diffusers(dict(keys)))
    else:  # what ModelMixin.load_lora_adapter does
        peft_keys = convert_unet_state_dict_to_peft(dict(keys))
    modules, rank = set(), 0
    for key, value in peft_keys.items():
        module = key.split(".lora_", 1)[0]
        modules.add(module.removeprefix("text_model."))
        if ".lora_B." in key and getattr(value, "ndim", 0) > 1:
            rank = max(rank, int(value.shape[1]))
    return modules, rank


def _loaded_modules(model: Any, name: str) -> set[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {
        module_name.removeprefix("text_model.")
        for module_name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer) and name in getattr(module, "lora_A", {})
    }


def _load_one(pipe: Any, spec: LoraSpec, name: str, components: dict[str, Any], allow_pickle: bool) -> dict[str, Any]:
    path = spec.path
    if not path.is_file():
        raise CheckpointError(f"LoRA adapter {path} does not exist (or is not a file). Pass the adapter file.")
    suffix = path.suffix.lower()
    pickled = suffix in PICKLE_SUFFIXES
    if pickled and not allow_pickle:
        raise CheckpointError(
            f"LoRA adapter {path} is a pickle file ({suffix}); unpickling can run arbitrary code, so memtest loads "
            "safetensors adapters only. Convert it to .safetensors, or, if you trust this file, pass "
            f"{option('allow_pickle', True)}."
        )
    if not pickled and suffix != ".safetensors":
        raise CheckpointError(
            f"LoRA adapter {path} has the suffix '{suffix}'; memtest loads LoRA adapters from .safetensors files "
            "(or, with allow_pickle, .bin/.pt/.ckpt)."
        )
    before = path.stat()
    sha256 = file_sha256(path)
    raw = _raw_keys(path, pickled)
    if not raw or not any("lora" in k.lower() for k in raw):
        what = "no tensors" if not raw else f"{len(raw)} tensors, none of them LoRA weights (e.g. '{raw[0]}')"
        raise CheckpointError(
            f"{path} is not a LoRA adapter: it holds {what}. Pass a LoRA file saved with `save_lora_weights` "
            "(diffusers/PEFT) or a kohya/A1111 LoRA; a full checkpoint is passed as the checkpoint instead."
        )
    fmt = "kohya" if all(k.startswith(_KOHYA_PREFIXES) for k in raw) else "peft"
    with _capture(pipe) as (seen, warned), warnings.catch_warnings():
        # Several adapters on one model are what memtest asks for; peft warns about it each time.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        try:
            pipe.load_lora_weights(str(path), adapter_name=name, use_safetensors=not pickled)
        except ValueError as exc:
            if "lora" in str(exc).lower() and ("param names" in str(exc) or "renamed" in str(exc)):
                raise CheckpointError(
                    f"{path} is not a LoRA adapter diffusers can read: {_clip(str(exc))}. Pass a LoRA saved with "
                    "`save_lora_weights` (diffusers/PEFT) or a kohya/A1111 LoRA of plain LoRA layers."
                ) from exc
            raise
    state = seen.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"Could not verify what diffusers loaded from LoRA adapter {path}; refusing it.")
    by_component: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        by_component.setdefault(key.split(".", 1)[0], {})[key.split(".", 1)[-1]] = value
    foreign = sorted(set(by_component) - set(components))
    if foreign or not state:
        have = ", ".join(components)
        raise CheckpointError(
            f"LoRA adapter {path} has weights for {', '.join(repr(c) for c in foreign) or 'nothing'}, which this "
            f"{type(pipe).__name__} base does not have (its LoRA-loadable components: {have}): the adapter was "
            f"trained for another model or text encoder. {_FIX}"
        )
    targets: list[str] = []
    modules_total, rank = 0, 0
    for component, model in components.items():
        keys = by_component.get(component)
        if not keys:
            continue
        expected, comp_rank = _expected_modules(component, keys)
        loaded = _loaded_modules(model, name)
        missing, extra = sorted(expected - loaded), sorted(loaded - expected)
        if missing or extra:
            detail = (
                f"{len(missing)} of its {len(expected)} {component} target modules are not in the base "
                f"(e.g. '{missing[0]}')"
                if missing
                else f"diffusers added LoRA layers the file has no weights for (e.g. '{extra[0]}')"
            )
            raise CheckpointError(f"LoRA adapter {path} does not fit this base: {detail}. {_FIX}")
        targets.append(component)
        modules_total += len(loaded)
        rank = max(rank, comp_rank)
    if warned.messages:
        raise CheckpointError(f"LoRA adapter {path} did not load cleanly: {_clip(warned.messages[0])} {_FIX}")
    after = path.stat()
    if (after.st_size, after.st_mtime_ns, after.st_ino) != (before.st_size, before.st_mtime_ns, before.st_ino):
        raise CheckpointError(f"LoRA adapter {path} changed while it was loading; run again once it is written.")
    return {
        "path": str(path),
        "name": name,
        "scale": spec.scale,
        "sha256": sha256,
        "format": fmt,
        "rank": rank,
        "targets": targets,
        "modules": modules_total,
    }


def apply_loras(pipe: Any, specs: Sequence[LoraSpec], *, allow_pickle: bool) -> list[dict[str, Any]]:
    """Load `specs` into a diffusers pipeline's components in place and activate them at their scales.

    `pipe` is a StableDiffusionPipeline or StableDiffusionXLPipeline (any pipeline with diffusers' LoRA
    loader mixin) built from the already-loaded components, with no adapters yet; its UNet and text
    encoders are modified in place, so a Checkpoint holding the same modules scores base + adapters.
    Adapters are named memtest_0, memtest_1, ... Any adapter that does not load completely raises
    CheckpointError naming the file and the fix, after every adapter has been removed again (never a
    partial load). Returns one plain-JSON record per adapter: path, name, scale, sha256, format
    ("peft" or "kohya"), rank (the largest), targets (components adapted) and modules (layers adapted).
    """
    specs = [parse_lora(s) if not isinstance(s, LoraSpec) else s for s in specs]
    if not specs:
        return []
    loadable = getattr(pipe, "_lora_loadable_modules", None)
    if not loadable or not hasattr(pipe, "load_lora_weights") or not hasattr(pipe, "set_adapters"):
        raise CheckpointError(
            f"{type(pipe).__name__} cannot load LoRA adapters (it has no diffusers LoRA loader); memtest "
            "loads LoRAs on Stable Diffusion 1.x/2.x and SDXL checkpoints."
        )
    components = {c: getattr(pipe, c) for c in loadable if getattr(pipe, c, None) is not None}
    present = {a for names in pipe.get_list_adapters().values() for a in names}
    if present:
        raise CheckpointError(
            f"The pipeline already has LoRA adapters ({', '.join(sorted(present))}); apply_loras expects freshly "
            "loaded components. Load the checkpoint again."
        )
    records: list[dict[str, Any]] = []
    try:
        for i, spec in enumerate(specs):
            records.append(_load_one(pipe, spec, f"{ADAPTER_PREFIX}{i}", components, allow_pickle))
        pipe.set_adapters([r["name"] for r in records], adapter_weights=[float(s.scale) for s in specs])
    except BaseException as exc:
        _unload(pipe)
        if isinstance(exc, CheckpointError) or not isinstance(exc, Exception):
            raise
        current = specs[len(records)] if len(records) < len(specs) else specs[-1]
        raise CheckpointError(
            f"LoRA adapter {current.path} does not fit this base: {type(exc).__name__}: {_clip(str(exc))} {_FIX}"
        ) from exc
    for model in components.values():
        # Scoring never trains: adapter weights are constants like the base's (and need no autograd graph).
        model.eval()
        model.requires_grad_(False)
    return records


def _clip(text: str, limit: int = 700) -> str:
    """A library message cut to a readable length, keeping its end (where peft and torch say what is wrong)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[: limit // 2]} ... {text[-limit // 2 :]}"


def _unload(pipe: Any) -> None:
    """Remove every LoRA layer again, so a failed load leaves the base's modules as they were."""
    try:
        pipe.unload_lora_weights()
    except Exception:  # a half-injected adapter may not unload; the caller discards the model anyway
        return
