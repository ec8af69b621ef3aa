"""Single-file checkpoints: one original-format (A1111 / ComfyUI / kohya / LDM) weights file of a whole model.

Such a file holds every component's weights under the original repositories' names
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`, ...) but no configs, so
the configs come from a local diffusers folder of the base (the `config` option) or, failing that, from the
base's snapshot already in the local Hugging Face cache; nothing is ever downloaded. diffusers converts the
weights (`Pipeline.from_single_file`).

diffusers' conversion forgives too much for a release gate: a tensor the conversion does not know is dropped
silently, and a component the file lacks is taken from the config folder's own weights (or left random). So,
before anything is loaded, the conversion is run once on the file's header alone (every tensor a `meta` tensor
of its shape, no data read) while tracing which file tensors each converted tensor was made from. Then:

- every converted component must match the state dict of its class built from the base's config on `meta`
  (nothing missing, nothing extra, every shape right), and a required component must be in the file;
- every tensor of the file must have gone into some component, except the LDM noise-schedule buffers
  (`betas`, `alphas_cumprod`, ...), which are compared with the base's scheduler instead, two EMA
  bookkeeping scalars, and what diffusers leaves out by design because it changes no output
  (`unused_by_design`: SD 2's last OpenCLIP layer, OpenCLIP's logit scale).

Only then does `from_single_file` load the weights; a parameter it left on `meta` is an error too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memtest.errors import CheckpointError, option
from memtest.models.loading import quiet_libraries
from memtest.models.locate import PICKLE_SUFFIXES

_SHOWN = 5

#: diffusers' model types (single_file_utils.infer_diffusers_model_type) memtest loads, by memtest family.
MODEL_TYPES: dict[str, str] = {
    "v1": "sd",
    "v2": "sd",
    "xl_base": "sdxl",
    "sd3": "sd3",
    "sd35_medium": "sd3",
    "sd35_large": "sd3",
    "flux-dev": "flux",
    "flux-schnell": "flux",
}

_NOT_TEXT_TO_IMAGE = (
    "memtest audits text-to-image checkpoints only; audit the text-to-image checkpoint it was made from"
)
#: Model types diffusers recognises that memtest refuses, and why.
REFUSED_TYPES: dict[str, str] = {
    "inpainting": f"an SD inpainting model: {_NOT_TEXT_TO_IMAGE}",
    "inpainting_v2": f"an SD 2 inpainting model: {_NOT_TEXT_TO_IMAGE}",
    "xl_inpaint": f"an SDXL inpainting model: {_NOT_TEXT_TO_IMAGE}",
    "xl_refiner": f"an SDXL refiner: {_NOT_TEXT_TO_IMAGE}",
    "upscale": f"an SD upscaler: {_NOT_TEXT_TO_IMAGE}",
    "instruct-pix2pix": f"an InstructPix2Pix model: {_NOT_TEXT_TO_IMAGE}",
    "flux-fill": f"a Flux Fill model: {_NOT_TEXT_TO_IMAGE}",
    "flux-depth": f"a Flux Depth model: {_NOT_TEXT_TO_IMAGE}",
    "playground-v2-5": "a Playground v2.5 model (an EDM schedule memtest does not score)",
}

#: The LDM noise-schedule buffers (DDPM.register_schedule); `betas` and `alphas_cumprod` are compared with the
#: base's scheduler, the rest are functions of them.
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
#: EMA bookkeeping scalars LDM's trainer saves beside the weights (not weights).
BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")
#: OpenCLIP's contrastive temperature, which no text-to-image model uses.
_LOGIT_SCALES = ("cond_stage_model.model.logit_scale", "conditioner.embedders.1.model.logit_scale")


def unused_by_design() -> frozenset[str]:
    """File tensors diffusers' conversion leaves out on purpose, which change no output: SD 2's last OpenCLIP
    layer and its projection (SD 2 conditions on the penultimate layer; diffusers' SD 2 text encoder has one
    layer less) and OpenCLIP's logit scale."""
    from diffusers.loaders.single_file_utils import SD_2_TEXT_ENCODER_KEYS_TO_IGNORE

    return frozenset([*SD_2_TEXT_ENCODER_KEYS_TO_IGNORE, *_LOGIT_SCALES])


_LABEL_EMB = "model.diffusion_model.label_emb.0.0.weight"
_LORA_MARKERS = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", ".lora_down.", ".lora_up.", "lora_A", "lora_B")
_VAE_PREFIXES = ("first_stage_model.", "vae.", "encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


@dataclass(frozen=True)
class SingleFile:
    """What the header of a single-file checkpoint says: its tensors, diffusers' model type and memtest's family."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    pickle: bool
    model_type: str
    family: str


def _keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def _pickle_refusal(path: Path) -> CheckpointError:
    return CheckpointError(
        f"'{path}' is a pickle ({path.suffix}); unpickling can run arbitrary code, so memtest loads safetensors "
        f"only. Convert it to .safetensors, or, if you trust this file, pass {option('allow_pickle', True)}."
    )


def read_header(path: Path, allow_pickle: bool) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor name -> shape and dtype, from a safetensors header (no tensor data), or from a trusted pickle
    loaded on `meta`. A pickle without `allow_pickle` is refused."""
    pickle = path.suffix.lower() in PICKLE_SUFFIXES
    if pickle and not allow_pickle:
        raise _pickle_refusal(path)
    try:
        if not pickle:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118 (not a dict)
                dtypes = {k: str(fh.get_slice(k).get_dtype()) for k in fh.keys()}  # noqa: SIM118
            return shapes, dtypes
        import torch

        state: Any = torch.load(str(path), map_location="meta", weights_only=True)
        while isinstance(state, dict) and "state_dict" in state:  # LDM/Lightning wrap the weights
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise TypeError("the pickle does not hold a state dict")
        tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
        return {k: tuple(v.shape) for k, v in tensors.items()}, {k: str(v.dtype) for k, v in tensors.items()}
    except Exception as exc:  # truncated, corrupt, not the format its name says
        kind = "pickle" if pickle else "safetensors"
        raise CheckpointError(
            f"'{path}' is not a readable {kind} file ({type(exc).__name__}: {exc}); it is truncated or corrupt. "
            "Copy it again."
        ) from exc


def _meta_state(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    import torch

    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def classify(path: str | Path, allow_pickle: bool = False) -> SingleFile:
    """Read a single file's header and say what it is; a LoRA, a VAE alone, a pickle (without `allow_pickle`), an
    unknown layout or a model type memtest does not audit is refused with the reason."""
    path = Path(path)
    shapes, dtypes = read_header(path, allow_pickle)
    keys = sorted(shapes)
    if not keys:
        raise CheckpointError(f"'{path}' holds no tensors. Copy it again.")
    lora = [k for k in keys if any(m in k for m in _LORA_MARKERS)]
    if lora:
        raise CheckpointError(
            f"'{path}' is a LoRA adapter, not a checkpoint ({len(lora)} LoRA tensors such as {_keys(lora[:2])}). "
            f"Load it on its base checkpoint: {option('checkpoint', 'BASE')} {option('lora', path)}."
        )
    if all(k.startswith(_VAE_PREFIXES) for k in keys):
        raise CheckpointError(
            f"'{path}' holds a VAE alone (only autoencoder tensors such as {_keys(keys[:2])}), not a text-to-image "
            "checkpoint; memtest scores the denoiser and text encoder. Pass the whole model's file or folder."
        )
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    try:
        model_type = str(infer_diffusers_model_type(_meta_state(shapes)))
    except Exception:  # a branch that reads values (meta has none) or a layout it half-recognises
        model_type = "unknown"
    if model_type == "v1":
        # diffusers tells SDXL by its 10th OpenCLIP layer; a smaller SDXL (a distilled one, a test's) has the same
        # layout with fewer layers: the pooled-text embedding (label_emb) and the second encoder's OpenCLIP names.
        if "conditioner.embedders.1.model.positional_embedding" in shapes and _LABEL_EMB in shapes:
            model_type = "xl_base"
        elif "conditioner.embedders.0.model.positional_embedding" in shapes and _LABEL_EMB in shapes:
            model_type = "xl_refiner"
    pickle = path.suffix.lower() in PICKLE_SUFFIXES
    if model_type in REFUSED_TYPES:
        raise CheckpointError(f"'{path}' is {REFUSED_TYPES[model_type]}.")
    ldm_unet = any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    if model_type not in MODEL_TYPES or (model_type == "v1" and not ldm_unet):
        # diffusers answers "v1" for anything it does not recognise: only an LDM UNet makes it SD.
        prefixes = sorted({".".join(k.split(".")[:2]) for k in keys})
        found = f"diffusers calls it '{model_type}'" if model_type not in ("v1", "unknown") else "no known layout"
        raise CheckpointError(
            f"'{path}' is not a single-file checkpoint of a family memtest audits ({found}; its tensors start with "
            f"{_keys(prefixes)}). memtest loads original-format Stable Diffusion 1.x/2.x, SDXL, SD3 and Flux.1 "
            "files; for another model, save it as a diffusers folder (`pipe.save_pretrained`) and pass the folder."
        )
    return SingleFile(path, shapes, dtypes, pickle, model_type, MODEL_TYPES[model_type])


# -- the configs ---------------------------------------------------------------------------------------
def base_folder(info: SingleFile, config: str | Path | None) -> Path:
    """The diffusers folder whose configs (and tokenizers, scheduler) the file is loaded with: `config`, else the
    base's snapshot in the local Hugging Face cache. Never downloads."""
    if config is not None and str(config) != "":
        folder = Path(config).expanduser()
        if not (folder / "model_index.json").is_file():
            raise CheckpointError(
                f"{option('config')} '{config}' is not a diffusers folder (it has no model_index.json). Pass the "
                "local diffusers folder of the base model the single file was made from (`pipe.save_pretrained`)."
            )
        return folder.resolve()
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS

    repo = str(DIFFUSERS_DEFAULT_PIPELINE_PATHS.get(info.model_type, {}).get("pretrained_model_name_or_path", ""))
    found: Path | None = None
    if repo:
        try:
            from huggingface_hub import snapshot_download

            found = Path(snapshot_download(repo, local_files_only=True))
        except Exception:  # not in the offline cache
            found = None
    if found is None or not (found / "model_index.json").is_file():
        cached = f" and the base diffusers assumes ({repo}) is not in the local Hugging Face cache" if repo else ""
        raise CheckpointError(
            f"'{info.path}' is a single-file checkpoint, which has no configs{cached}; memtest never downloads. "
            f"Pass the local diffusers folder of its base with {option('config', 'BASE_FOLDER')} (library: "
            "load_checkpoint(path, config=BASE_FOLDER))."
        )
    return found


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"'{path}' is not valid JSON ({exc}). Re-save the base folder.") from exc
    if not isinstance(doc, dict):
        raise CheckpointError(f"'{path}' must hold a JSON object. Re-save the base folder.")
    return doc


# -- provenance: which file tensors each converted tensor was made from ----------------------------------
class _Provenance:
    """A torch function mode that records, for every tensor an op returns, the file tensors it was made from."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        self.origin: dict[int, frozenset[str]] = {id(v): frozenset([k]) for k, v in state.items()}
        self._alive: list[Any] = list(state.values())  # ids stay unique while the tensors live

    def sources(self, values: Any) -> set[str]:
        out: set[str] = set()
        for v in values:
            out |= self.origin.get(id(v), frozenset())
        return out

    @contextlib.contextmanager
    def tracing(self) -> Iterator[None]:
        import torch
        from torch.overrides import TorchFunctionMode
        from torch.utils._pytree import tree_leaves

        tracer = self

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                out = func(*args, **(kwargs or {}))
                came: set[str] = set()
                for leaf in tree_leaves((args, kwargs or {})):
                    if isinstance(leaf, torch.Tensor):
                        came |= tracer.origin.get(id(leaf), frozenset())
                if came:
                    for leaf in tree_leaves(out):
                        if isinstance(leaf, torch.Tensor):
                            tracer.origin[id(leaf)] = tracer.origin.get(id(leaf), frozenset()) | came
                            tracer._alive.append(leaf)
                return out

        with Mode():
            yield


# -- conversion, as from_single_file does it -------------------------------------------------------------
def _mapping_function(cls: Any) -> Any:
    import diffusers
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    for name, entry in SINGLE_FILE_LOADABLE_CLASSES.items():
        if issubclass(cls, getattr(diffusers, name)):
            return entry["checkpoint_mapping_fn"]
    raise CheckpointError(f"diffusers cannot convert a {cls.__name__} from a single file.")


def _convert_text_encoder(model: Any, state: dict[str, Any]) -> dict[str, Any] | None:
    """The text encoder's weights as `create_diffusers_clip_model_from_ldm` (or the T5 loader) converts them;
    None when the file holds no text encoder of this kind (from_single_file would take the base's)."""
    from diffusers.loaders import single_file_utils as sfu

    cls = type(model)
    if sfu.is_clip_model_in_single_file(cls, state):
        text_model = model.text_model if hasattr(model, "text_model") else model
        dim = text_model.embeddings.position_embedding.weight.shape[-1]
        names = sfu.CHECKPOINT_KEY_NAMES
        if sfu.is_clip_model(state) or (sfu.is_clip_sdxl_model(state) and state[names["clip_sdxl"]].shape[-1] == dim):
            out = sfu.convert_ldm_clip_checkpoint(state)
        elif sfu.is_clip_sd3_model(state) and state[names["clip_sd3"]].shape[-1] == dim:
            import torch

            out = sfu.convert_ldm_clip_checkpoint(state, "text_encoders.clip_l.transformer.")
            out["text_projection.weight"] = torch.eye(dim, device="meta")  # diffusers' own: the file has none
        elif sfu.is_open_clip_model(state):
            out = sfu.convert_open_clip_checkpoint(model, state, prefix="cond_stage_model.model.")
        elif sfu.is_open_clip_sdxl_model(state) and state[names["open_clip_sdxl"]].shape[-1] == dim:
            out = sfu.convert_open_clip_checkpoint(model, state, prefix="conditioner.embedders.1.model.")
        elif sfu.is_open_clip_sd3_model(state) and state[names["open_clip_sd3"]].shape[-1] == dim:
            out = sfu.convert_ldm_clip_checkpoint(state, "text_encoders.clip_g.transformer.")
        else:
            return None
        if not hasattr(model, "text_model"):
            out = {k.removeprefix("text_model."): v for k, v in out.items()}
        return dict(out)
    if cls.__name__.startswith("T5") and sfu.is_t5_in_single_file(state):
        return dict(sfu.convert_sd3_t5_checkpoint_to_diffusers(state))
    return None


@dataclass
class _Mismatch:
    missing: list[str]
    unexpected: list[str]
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]


def _compare(model: Any, converted: Mapping[str, Any]) -> _Mismatch:
    """The converted state dict against the class's own (exact names: from_single_file renames nothing more)."""
    state = model.state_dict(keep_vars=True)
    tied: dict[int, set[str]] = {}
    for name, t in state.items():
        tied.setdefault(id(t), set()).add(name)
    persistent = set(state)
    transient = {n for n, _ in model.named_buffers()} - persistent  # non-persistent buffers: rebuilt by the class
    ignore = [str(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()]
    import re

    unexpected = [
        k for k in converted if k not in persistent and k not in transient and not any(re.search(p, k) for p in ignore)
    ]
    missing = [k for k in state if k not in converted and not (tied[id(state[k])] & set(converted))]
    shapes = [
        (k, tuple(v.shape), tuple(state[k].shape))
        for k, v in converted.items()
        if k in state and tuple(v.shape) != tuple(state[k].shape)
    ]
    return _Mismatch(sorted(missing), sorted(unexpected), sorted(shapes))


def _skeleton(cls: Any, folder: Path) -> Any:
    import torch

    with quiet_libraries(), torch.device("meta"):
        if str(cls.__module__).startswith("diffusers"):
            return cls.from_config(cls.load_config(str(folder)))
        return cls(cls.config_class.from_pretrained(str(folder)))


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE for the duration of a load (huggingface_hub reads it at import, so its constant too)."""
    import huggingface_hub.constants as hub

    saved_env = os.environ.get("HF_HUB_OFFLINE")
    saved = hub.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = saved
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


# -- the checks and the load -----------------------------------------------------------------------------
def _check_schedule(info: SingleFile, folder: Path, index: Mapping[str, Any]) -> None:
    """The file's LDM schedule buffers must be the base scheduler's (else the file was trained on another noise
    schedule than the one memtest would score it with)."""
    present = [k for k in ("betas", "alphas_cumprod") if k in info.shapes]
    if not present:
        return
    import diffusers
    import torch
    from safetensors import safe_open

    entry = index.get("scheduler")
    sched_cls = getattr(diffusers, str(entry[1]), None) if isinstance(entry, list) and len(entry) == 2 else None
    scheduler = sched_cls.from_pretrained(str(folder), subfolder="scheduler") if sched_cls is not None else None
    for key in present:
        ours = getattr(scheduler, key, None)
        if ours is None:
            raise CheckpointError(
                f"'{info.path}' holds the noise schedule buffer '{key}', but the base's scheduler in '{folder}' has "
                "none to compare it with. Pass the diffusers folder of the base the file was trained from."
            )
        if info.pickle:
            state = torch.load(str(info.path), map_location="cpu", weights_only=True)
            while isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            theirs = state[key]
        else:
            with safe_open(str(info.path), framework="pt") as fh:
                theirs = fh.get_tensor(key)
        ok = tuple(theirs.shape) == tuple(ours.shape) and torch.allclose(
            theirs.to(torch.float64), ours.to(torch.float64), rtol=1e-3, atol=1e-6
        )
        if not ok:
            raise CheckpointError(
                f"'{info.path}' was made with another noise schedule than its base's: its '{key}' differs from the "
                f"scheduler in '{folder / 'scheduler'}'. memtest scores with the base's schedule, so it stops. Pass "
                f"the diffusers folder of the base the file was trained from as {option('config')}."
            )


def _convert_all(info: SingleFile, family: Any, folder: Path, index: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Run the conversion on the header alone and check it (module docstring); (components to load from the
    file, optional components the file does not hold)."""
    from memtest.models.families.base import component_class, declared

    state = _meta_state(info.shapes)
    trace = _Provenance(state)
    consumed: set[str] = set()
    load: list[str] = []
    absent: list[str] = []
    where = str(folder / "model_index.json")
    for comp in family.components:
        if not comp.weights or not declared(index, comp.name):
            if comp.required and not declared(index, comp.name):
                raise CheckpointError(f"The base folder '{folder}' declares no '{comp.name}' in model_index.json.")
            continue
        cls = component_class(index, comp, where)
        try:
            skeleton = _skeleton(cls, folder / comp.name)
        except Exception as exc:
            raise CheckpointError(
                f"The base folder's '{comp.name}/config.json' does not build a {cls.__name__} "
                f"({type(exc).__name__}: {exc}). Pass a complete diffusers folder of the base."
            ) from exc
        with trace.tracing():
            if comp.library == "diffusers":
                config = dict(cls.load_config(str(folder / comp.name)))
                converted = dict(_mapping_function(cls)(config=config, checkpoint=state))
            else:
                converted = _convert_text_encoder(skeleton, state) or {}
        if not converted:
            if not comp.required:
                absent.append(comp.name)
                continue
            raise CheckpointError(
                f"'{info.path}' holds no weights for the {comp.name} ({cls.__name__}); diffusers would take them "
                f"from the base folder '{folder}', and memtest scores only the weights the file holds. Pass a "
                "single file of the whole model (or the diffusers folder)."
            )
        m = _compare(skeleton, converted)
        if m.missing or m.unexpected or m.shapes:
            parts = []
            if m.missing:
                parts.append(f"lacks {len(m.missing)} tensor(s) {cls.__name__} needs ({_keys(m.missing)})")
            if m.unexpected:
                parts.append(f"has {len(m.unexpected)} tensor(s) {cls.__name__} does not use ({_keys(m.unexpected)})")
            if m.shapes:
                shown = ", ".join(f"{k} is {list(a)} converted, {list(b)} in the model" for k, a, b in m.shapes[:3])
                parts.append(f"has {len(m.shapes)} tensor(s) of the wrong shape ({shown})")
            raise CheckpointError(
                f"'{info.path}': its {comp.name}, as diffusers converts it, {'; and '.join(parts)}. memtest scores "
                "exactly the released weights, so it stops rather than "
                f"{'leave tensors uninitialised' if m.missing else 'guess'}. Check that {option('config')} "
                f"('{folder}') is the base this file was made from."
            )
        consumed |= trace.sources(converted.values())
        load.append(comp.name)
    accounted = set(SCHEDULE_BUFFERS) | set(BOOKKEEPING) | unused_by_design()
    unused = sorted(k for k in info.shapes if k not in consumed and k not in accounted)
    if unused:
        raise CheckpointError(
            f"'{info.path}' holds {len(unused)} tensor(s) that no component of the {family.title} model uses "
            f"({_keys(unused)}). memtest scores exactly the released weights and will not drop any: the file holds "
            "something else too (EMA weights, another model's layers) or is not this family. Save the model alone "
            "(or as a diffusers folder) and pass that."
        )
    return load, absent


def load_single_file(
    path: str | Path, config: str | Path | None = None, allow_pickle: bool = False
) -> tuple[Any, dict[str, Any], dict[str, Any], Path]:
    """Load a single-file checkpoint strictly (module docstring): (family, components by diffusers folder name,
    the base's model_index.json, the base folder used)."""
    from memtest.models.families import family_named, recognise

    info = classify(path, allow_pickle=allow_pickle)
    family = family_named(info.family)
    folder = base_folder(info, config)
    index = _read_json(folder / "model_index.json")
    base_family = recognise(index, str(folder / "model_index.json"))
    if base_family.name != family.name:
        raise CheckpointError(
            f"'{info.path}' is a {family.title} checkpoint (read from its tensors), but {option('config')} "
            f"'{folder}' is a {base_family.title} folder. Pass the diffusers folder of the file's own base."
        )
    load, absent = _convert_all(info, family, folder, index)
    _check_schedule(info, folder, index)

    import diffusers

    pipeline_cls = getattr(diffusers, family.pipelines[0])
    expected, _ = pipeline_cls._get_signature_keys(pipeline_cls)
    wanted = {c.name for c in family.components}
    overrides: dict[str, Any] = {name: None for name in expected if name not in wanted or name in absent}
    try:
        with quiet_libraries(), _offline():
            pipe = pipeline_cls.from_single_file(str(info.path), config=str(folder), local_files_only=True, **overrides)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"diffusers could not load the single file '{info.path}' with the configs in '{folder}': "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. Check that "
            f"{option('config')} is the diffusers folder of this file's base."
        ) from exc
    components: dict[str, Any] = {}
    for comp in family.components:
        value = getattr(pipe, comp.name, None)
        if value is None:
            if comp.required:
                raise CheckpointError(f"diffusers loaded no '{comp.name}' from '{info.path}'.")
            continue
        components[comp.name] = value
    import torch

    for name in load:
        model = components[name]
        left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device == torch.device("meta")]
        if left:
            raise CheckpointError(
                f"'{info.path}': diffusers left {len(left)} tensor(s) of the {name} unloaded ({_keys(sorted(left))})."
                " memtest never scores an uninitialised model."
            )
    return family, components, index, folder


__all__ = [
    "BOOKKEEPING",
    "MODEL_TYPES",
    "REFUSED_TYPES",
    "SCHEDULE_BUFFERS",
    "SingleFile",
    "base_folder",
    "classify",
    "load_single_file",
    "read_header",
    "unused_by_design",
]
