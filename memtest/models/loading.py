"""Strict loading of one checkpoint component (a diffusers/transformers model folder).

`from_pretrained` forgives too much for a release gate: a weights file that lacks tensors loads anyway
(diffusers leaves them uninitialised or random and logs a warning, so memtest would score a model that is
not the one released), extra tensors are dropped with a warning, and a folder whose config names another
class fails much later, deep inside a forward pass. `load_component` refuses all of these with one
`CheckpointError` that names the component, what is wrong and how to fix it.

Before anything is loaded it compares the tensor names and shapes in the weights files' headers (no
tensor data is read) with the state dict of the component's class built from its config on the `meta`
device, after the renames the library itself applies on load (diffusers' legacy attention names,
transformers' conversion mappings and base-model prefix). Only then does `from_pretrained` load the
weights, and its own loading report must be clean too.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memtest.errors import CheckpointError, option

#: Weight file stems: diffusers, transformers (safetensors) and transformers (pickle).
_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
_FORMATS = {"safetensors": True, "bin": False}
_SINGLE = re.compile(r"^(?P<stem>[a-z_]+?)(?:\.(?P<variant>[A-Za-z0-9_]+))?\.(?P<fmt>safetensors|bin)$")
_INDEX = re.compile(r"^(?P<stem>[a-z_]+?)\.(?P<fmt>safetensors|bin)\.index(?:\.(?P<variant>[A-Za-z0-9_]+))?\.json$")
_SHOWN = 5  # keys named in a message


@dataclass(frozen=True)
class Weights:
    """The weights of one component: one file, or the shards an index names."""

    folder: Path
    files: tuple[Path, ...]
    index: Path | None
    variant: str | None
    safetensors: bool

    def describe(self) -> str:
        if self.index is not None:
            return f"{self.index.name} ({len(self.files)} shards)"
        return self.files[0].name


# -- config and class ---------------------------------------------------------------------------------
def _library(cls: Any) -> str:
    module = str(getattr(cls, "__module__", ""))
    if module.startswith("diffusers"):
        return "diffusers"
    if module.startswith("transformers"):
        return "transformers"
    raise CheckpointError(f"{cls!r} is neither a diffusers nor a transformers model class; memtest cannot load it.")


def read_config(folder: Path, component: str) -> dict[str, Any]:
    path = folder / component / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"Component '{component}' has no config.json in '{path.parent}'. Re-save it with `save_pretrained`, "
            "which writes the config beside the weights."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"'{path}' is not valid JSON ({exc}). Re-save the component with `save_pretrained`."
        ) from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"'{path}' must hold a JSON object. Re-save the component with `save_pretrained`.")
    return config


def config_class(config: Mapping[str, Any], library: str) -> str | None:
    """The model class a config names: diffusers' `_class_name`, transformers' first `architectures` entry."""
    if library == "diffusers":
        name = config.get("_class_name")
    else:
        archs = config.get("architectures")
        name = archs[0] if isinstance(archs, list) and archs else None
    return name if isinstance(name, str) and name else None


def check_class(folder: Path, component: str, found: str | None, expected: tuple[str, ...], library: str) -> None:
    if found in expected:
        return
    key = "_class_name" if library == "diffusers" else "architectures"
    wanted = " or ".join(expected)
    what = found if found else f"of no class (config.json has no {key})"
    raise CheckpointError(
        f"Component '{component}' in '{folder / component}' is {what}, but memtest needs {wanted} there "
        f"(config.json `{key}`). The folder holds another model: point model_index.json's '{component}' entry at "
        f"a {expected[0]} saved with `save_pretrained`, or re-save the pipeline."
    )


# -- weight files -------------------------------------------------------------------------------------
def find_weights(
    folder: Path, component: str, *, allow_pickle: bool, variant: str | None = None, library: str | None = None
) -> Weights:
    """The weights `from_pretrained` will read: a single file or a sharded index, plain or a variant.

    Safetensors win over pickle. Without `variant` the plain weights are used, or the only variant there
    is; several variants and no plain weights is ambiguous. A single file and an index of the same
    variant are ambiguous too (diffusers and transformers would pick different ones).
    """
    sub = folder / component
    stems = _STEMS if library is None else (("diffusion_pytorch_model",) if library == "diffusers" else _STEMS[1:])
    sets: dict[tuple[str | None, bool], list[Path]] = {}
    for path in sorted(p for p in sub.iterdir() if p.is_file()):
        match = _INDEX.match(path.name) or _SINGLE.match(path.name)
        if match is None or match["stem"] not in stems:
            continue
        sets.setdefault((match["variant"], _FORMATS[match["fmt"]]), []).append(path)
    safe = {k: v for k, v in sets.items() if k[1]}
    if not safe:
        pickles = sorted(p.name for paths in sets.values() for p in paths)
        if not pickles:
            raise CheckpointError(
                f"Component '{component}' has no weights in '{sub}' (expected {stems[0]}.safetensors or a sharded "
                f"{stems[0]}.safetensors.index.json). Re-save it with `save_pretrained`."
            )
        if not allow_pickle:
            raise CheckpointError(
                f"Component '{component}' in '{sub}' has only pickle weights ({', '.join(pickles)}); unpickling can "
                "run arbitrary code, so memtest loads safetensors only. Convert with "
                "`save_pretrained(folder, safe_serialization=True)`, or, if you trust this file, pass "
                f"{option('allow_pickle', True)}."
            )
        safe = sets
    variants = sorted({v for v, _ in safe}, key=lambda v: (v is not None, v or ""))
    if variant is not None:
        if variant not in variants:
            have = ", ".join(v or "(plain)" for v in variants)
            raise CheckpointError(
                f"Component '{component}' in '{sub}' has no '{variant}' variant weights (it has: {have}). "
                "Pick one of those variants, or save the weights with `save_pretrained(..., variant=...)`."
            )
        chosen: str | None = variant
    elif None in variants:
        chosen = None
    elif len(variants) == 1:
        chosen = variants[0]
    else:
        raise CheckpointError(
            f"Component '{component}' in '{sub}' has several weight variants ({', '.join(str(v) for v in variants)}) "
            "and no plain weights, so which one is the release is ambiguous. Keep one variant, or save the plain "
            "weights with `save_pretrained`."
        )
    is_safe = (chosen, True) in safe
    paths = safe[(chosen, is_safe)]
    indexes = [p for p in paths if p.name.endswith(".json")]
    singles = [p for p in paths if not p.name.endswith(".json")]
    if (len(indexes) + len(singles) > 1) or not paths:
        names = ", ".join(p.name for p in paths)
        raise CheckpointError(
            f"Component '{component}' in '{sub}' has more than one set of weights ({names}); diffusers and "
            "transformers would not agree on which to load. Delete all but one, or re-save with `save_pretrained`."
        )
    if indexes:
        return Weights(sub, _shards(indexes[0], component), indexes[0], chosen, is_safe)
    return Weights(sub, (singles[0],), None, chosen, is_safe)


def _index_map(index: Path, component: str) -> dict[str, str]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map must map tensor names to file names")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"Component '{component}': the shard index '{index}' is unreadable ({type(exc).__name__}: {exc}). "
            "Re-save the component with `save_pretrained`."
        ) from exc
    return dict(weight_map)


def _shards(index: Path, component: str) -> tuple[Path, ...]:
    names = sorted(set(_index_map(index, component).values()))
    missing = [n for n in names if not (index.parent / n).is_file() or "/" in n or "\\" in n]
    if missing or not names:
        raise CheckpointError(
            f"Component '{component}': the shard index '{index}' names {len(missing) or 'no'} shard file(s) "
            f"that are not in '{index.parent}'{': ' + ', '.join(missing[:_SHOWN]) if missing else ''}. "
            "Copy every shard, or re-save the component with `save_pretrained`."
        )
    return tuple(index.parent / n for n in names)


def read_shapes(weights: Weights, component: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of every tensor in the weights, from the file headers (no data is read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    where: dict[str, str] = {}
    for path in weights.files:
        for key, shape in _file_shapes(path, component, weights.safetensors).items():
            if key in shapes:
                raise CheckpointError(
                    f"Component '{component}': tensor '{key}' is in both {where[key]} and {path.name}. "
                    "Re-save the component with `save_pretrained`."
                )
            shapes[key], where[key] = shape, path.name
    if weights.index is not None:
        _check_index(weights.index, where, component)
    return shapes


def _file_shapes(path: Path, component: str, safetensors: bool) -> dict[str, tuple[int, ...]]:
    try:
        if safetensors:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118 (not a dict)
        import torch

        # The caller opted in to pickle; `meta` reads names and shapes without the tensor data.
        state = torch.load(str(path), map_location="meta", weights_only=True)
        return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    except Exception as exc:  # any unreadable file: truncated, corrupt, not the format its name says
        raise CheckpointError(
            f"Component '{component}': '{path}' is not a readable {'safetensors' if safetensors else 'pickle'} file "
            f"({type(exc).__name__}: {exc}); it is truncated or corrupt. Copy it again, or re-save the component "
            "with `save_pretrained`."
        ) from exc


def _check_index(index: Path, where: Mapping[str, str], component: str) -> None:
    weight_map = _index_map(index, component)
    wrong = sorted(k for k, f in weight_map.items() if where.get(k) != f)
    unlisted = sorted(k for k in where if k not in weight_map)
    if wrong or unlisted:
        parts = []
        if wrong:
            parts.append(f"names {len(wrong)} tensor(s) its shard does not hold ({_keys(wrong)})")
        if unlisted:
            parts.append(f"does not list {len(unlisted)} tensor(s) the shards hold ({_keys(unlisted)})")
        raise CheckpointError(
            f"Component '{component}': the shard index {index.name} {' and '.join(parts)}. The shards and the index "
            "are from different saves: copy them again together, or re-save the component with `save_pretrained`."
        )


# -- what the class needs -----------------------------------------------------------------------------
def _skeleton(cls: Any, sub: Path, library: str) -> Any:
    """The component's module built from its config on the meta device (no memory, no initialisation)."""
    import torch

    with quiet_libraries(), torch.device("meta"):
        if library == "diffusers":
            return cls.from_config(cls.load_config(str(sub)))
        config = cls.config_class.from_pretrained(str(sub))
        return cls(config)


@dataclass
class _Expected:
    shapes: dict[str, tuple[int, ...]]
    aliases: dict[str, frozenset[str]]  # a tied tensor's names: any one of them in the file loads all
    extra_ok: frozenset[str]  # non-persistent buffers: old files carry them, the class rebuilds them
    ignore_unexpected: tuple[re.Pattern[str], ...]
    ignore_missing: tuple[re.Pattern[str], ...]


def _expected(model: Any) -> _Expected:
    state = model.state_dict(keep_vars=True)
    by_tensor: dict[int, set[str]] = {}
    for name, tensor in state.items():
        by_tensor.setdefault(id(tensor), set()).add(name)
    aliases = {name: frozenset(names) for names in by_tensor.values() for name in names}
    buffers = {name for name, _ in model.named_buffers()}
    ignore_unexpected = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()]
    ignore_missing = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or ()]
    return _Expected(
        shapes={k: tuple(v.shape) for k, v in state.items()},
        aliases=aliases,
        extra_ok=frozenset(buffers - set(state)),
        ignore_unexpected=tuple(ignore_unexpected),
        ignore_missing=tuple(ignore_missing),
    )


def _renamer(model: Any, expected: Mapping[str, Any]) -> Callable[[str], tuple[str, bool]]:
    """transformers: file key -> (model key, whether a converter merges it), as `from_pretrained` renames it."""
    base = str(getattr(model, "base_model_prefix", "") or "") or None
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        mapping = get_model_conversion_mapping(model)
        renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        converters = [m for m in mapping if isinstance(m, WeightConverter)]
    except (ImportError, AttributeError, TypeError):  # an older transformers: only the base-model prefix moves
        return lambda key: (_move_prefix(key, base, expected), False)

    def rename(key: str) -> tuple[str, bool]:
        # The same two tries as transformers' convert_and_load_state_dict_in_model.
        new, pattern = rename_source_key(key, renamings, converters, base, expected)
        if new not in expected and key in expected:
            new, pattern = rename_source_key(key, [], [], base, expected)
        return str(new), pattern is not None

    return rename


def _move_prefix(key: str, base: str | None, expected: Mapping[str, Any]) -> str:
    if base and key.startswith(base + ".") and key[len(base) + 1 :] in expected:
        return key[len(base) + 1 :]
    if base and f"{base}.{key}" in expected:
        return f"{base}.{key}"
    return key


def _rename_diffusers(model: Any, shapes: dict[str, tuple[int, ...]], weights: Weights) -> dict[str, tuple[int, ...]]:
    # diffusers renames deprecated attention keys (query/key/value/proj_attn) of single-file weights only.
    renamed = dict(shapes)
    fix = getattr(model, "_fix_state_dict_keys_on_load", None)
    if weights.index is None and callable(fix):
        fix(renamed)
    return renamed


@dataclass
class Mismatch:
    missing: list[str]
    unexpected: list[str]
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # key, in the file, in the model

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)


def compare(model: Any, library: str, weights: Weights, file_shapes: dict[str, tuple[int, ...]]) -> Mismatch:
    """What the weights lack, hold in excess, or hold in another shape, for the class built as `model`."""
    exp = _expected(model)
    present: dict[str, tuple[int, ...] | None] = {}  # model key -> shape in the file (None: converted)
    unused: list[tuple[str, str]] = []  # (key in the file, key after renaming)
    if library == "diffusers":
        for key, shape in _rename_diffusers(model, file_shapes, weights).items():
            if key in exp.shapes:
                present[key] = shape
            else:
                unused.append((key, key))
    else:
        rename = _renamer(model, exp.shapes)
        for key, shape in file_shapes.items():
            new, converted = rename(key)
            if new in exp.shapes:
                present[new] = None if converted else shape
            else:
                unused.append((key, new))
    unexpected = [
        key
        for key, new in unused
        if not ({key, new} & exp.extra_ok) and not any(p.search(k) for p in exp.ignore_unexpected for k in (key, new))
    ]
    missing = [
        k
        for k in exp.shapes
        if k not in present
        and not any(a in present for a in exp.aliases.get(k, ()))
        and not any(p.search(k) for p in exp.ignore_missing)
    ]
    shapes = [(k, s, exp.shapes[k]) for k, s in present.items() if s is not None and s != exp.shapes[k]]
    return Mismatch(sorted(missing), sorted(unexpected), sorted(shapes))


def _keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def mismatch_message(component: str, cls_name: str, weights: Weights, m: Mismatch, source: str = "") -> str:
    parts = []
    if m.missing:
        parts.append(f"lack {len(m.missing)} tensor(s) {cls_name} needs ({_keys(m.missing)})")
    if m.unexpected:
        parts.append(f"hold {len(m.unexpected)} tensor(s) {cls_name} does not use ({_keys(m.unexpected)})")
    if m.shapes:
        shown = ", ".join(f"{k} is {list(f)} in the file, {list(e)} in the model" for k, f, e in m.shapes[:_SHOWN])
        more = f", ... ({len(m.shapes) - _SHOWN} more)" if len(m.shapes) > _SHOWN else ""
        parts.append(f"have {len(m.shapes)} tensor(s) of the wrong shape ({shown}{more})")
    return (
        f"Component '{component}' does not match its class: its weights ({weights.describe()} in "
        f"'{weights.folder}'){source} {'; and '.join(parts)}. memtest scores exactly the released weights, so it "
        f"stops rather than {'leave tensors uninitialised' if m.missing else 'guess'}. Check that config.json and "
        f"the weights come from the same model, and re-save the component with `save_pretrained` from it."
    )


# -- loading ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence diffusers' and transformers' load-time warnings and progress bars for one load: every
    problem they would warn about is an error here, reported once."""
    import diffusers
    import transformers

    saved = []
    for lib in (diffusers, transformers):
        logging = lib.utils.logging
        saved.append((logging, logging.get_verbosity(), logging.is_progress_bar_enabled()))
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    try:
        yield
    finally:
        for logging, verbosity, bars in saved:
            logging.set_verbosity(verbosity)
            if bars:
                logging.enable_progress_bar()


def _reported(info: Mapping[str, Any], exp: Any) -> Mismatch:
    """The library's own loading report as a Mismatch (keys it ignores by design excluded)."""
    missing = sorted(str(k) for k in info.get("missing_keys") or ())
    unexpected = sorted(str(k) for k in info.get("unexpected_keys") or () if k not in exp.extra_ok)
    shapes = [(str(k), tuple(a), tuple(b)) for k, a, b in (info.get("mismatched_keys") or ())]
    return Mismatch(missing, unexpected, sorted(shapes))


def load_component(
    folder: Path,
    component: str,
    cls: Any,
    *,
    expected: tuple[str, ...],
    allow_pickle: bool,
    variant: str | None = None,
) -> Any:
    """Load `folder/component` with `cls.from_pretrained`, strictly (see the module docstring).

    `cls` is the diffusers or transformers model class to load with, `expected` the class names its
    config.json may name. Raises CheckpointError on a wrong class, missing or ambiguous weights, pickle
    weights without `allow_pickle`, a tensor missing, unused or of the wrong shape, or any load failure.
    """
    folder = Path(folder)
    sub = folder / component
    if not sub.is_dir():
        raise CheckpointError(f"Checkpoint '{folder}' is missing its '{component}/' folder.")
    library = _library(cls)
    check_class(folder, component, config_class(read_config(folder, component), library), expected, library)
    weights = find_weights(folder, component, allow_pickle=allow_pickle, variant=variant, library=library)
    file_shapes = read_shapes(weights, component)
    cls_name = str(getattr(cls, "__name__", cls))
    try:
        skeleton = _skeleton(cls, sub, library)
    except Exception as exc:
        raise CheckpointError(
            f"Component '{component}': its config.json does not build a {cls_name} ({type(exc).__name__}: "
            f"{_first_line(exc)}). Re-save the component with `save_pretrained`."
        ) from exc
    mismatch = compare(skeleton, library, weights, file_shapes)
    if mismatch:
        raise CheckpointError(mismatch_message(component, cls_name, weights, mismatch))
    exp = _expected(skeleton)
    del skeleton

    kwargs: dict[str, Any] = {"use_safetensors": weights.safetensors, "output_loading_info": True}
    if weights.variant is not None:
        kwargs["variant"] = weights.variant
    if library == "diffusers":
        # Both paths map the safetensors file and copy nothing (SD v1's UNet + text encoder: under 1 s and
        # 4.0 GiB peak RSS either way), so memtest needs no accelerate. Saying so explicitly gives one code
        # path whether or not accelerate happens to be installed, and no "accelerate was not found" warning.
        kwargs["low_cpu_mem_usage"] = False
    try:
        with quiet_libraries():
            model, info = cls.from_pretrained(str(sub), **kwargs)
    except Exception as exc:
        raise CheckpointError(
            f"Could not load component '{component}' from '{sub}': {type(exc).__name__}: {_first_line(exc)}. "
            "Check that the folder was written by `save_pretrained` and is complete."
        ) from exc
    reported = _reported(info, exp)
    if reported:
        raise CheckpointError(mismatch_message(component, cls_name, weights, reported, f" (as {library} loaded them)"))
    import torch

    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device == torch.device("meta")]
    if meta:  # a tensor no weight filled: never score an uninitialised model
        raise CheckpointError(
            mismatch_message(component, cls_name, weights, Mismatch(sorted(meta), [], []), " (left unloaded)")
        )
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= 300 else line[:297] + "..."


__all__ = [
    "Mismatch",
    "Weights",
    "check_class",
    "compare",
    "config_class",
    "find_weights",
    "load_component",
    "mismatch_message",
    "read_config",
    "read_shapes",
]
