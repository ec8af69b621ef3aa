"""Train a tiny text-to-image canary checkpoint on CPU (imports torch; `memtest.zoo` loads it lazily).

Two phases, both seeded:

1. the VAE (MSE + a small KL term; planted images over-represented), after which `scaling_factor` is set
   to 1 / std of the latents (flow VAEs also get `shift_factor` = their mean, as SD3's VAE has one);
2. the denoiser and the text encoder(s) together, with classifier-free-guidance training (captions dropped
   to "" with some probability) and half of each batch at high noise levels, where the first sampling step
   (t = 981) looks.

Phase 2 goes through the model family's interface (`memtest.models.families`: token ids, conditioning with
gradients, caption dropout as the family's unconditional branch, the forward, the trained modules), so the
same loop trains every family; what a step regresses (timesteps, noising, target) is the family's noise
process, the `Process` the scorer samples with (`DDPMProcess` for SD and SDXL, `FlowProcess` for SD3), and
the loss is the mean squared error. A fine-tune starts from a trained canary
(its tokenizer, VAE and scaling are kept frozen) and runs phase 2 only; a new canary may take another
canary's trained tokenizer and VAE instead of phase 1 (`vae_from`). Progress (steps, loss, elapsed, ETA)
goes to stderr.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from memtest._version import __version__
from memtest.detection.settings import ScoreSettings
from memtest.errors import ZooError
from memtest.models.canaries import CanaryManifest, PlantedCaption, encode_png, load_manifest
from memtest.progress import clock
from memtest.zoo.data import CanaryData, digits_data
from memtest.zoo.tiny import TinyConfig, build_pipeline, build_sdxl_pipeline, build_tokenizer, save_pipeline
from memtest.zoo.tiny_flow import FLOW_CANARY_CONFIG, TinyFlowConfig, build_sd3_pipeline

if TYPE_CHECKING:
    from memtest.models.checkpoint import Checkpoint
    from memtest.models.families.base import Process


@dataclass(frozen=True)
class Recipe:
    """Every hyperparameter of a canary training run (recorded in the manifest)."""

    seed: int = 0
    # phase 1: VAE
    vae_steps: int = 500
    vae_batch: int = 64
    vae_lr: float = 2e-3
    vae_kl: float = 1e-6
    vae_planted_repeat: int = 100  # planted images appear this many times in the VAE's data
    # phase 2: UNet + text encoder
    steps: int = 1500
    batch: int = 64
    unet_lr: float = 1e-3
    text_lr: float = 5e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 50
    lr_schedule: str = "constant"  # or "cosine" (decays to lr_min_ratio x lr after warm-up)
    lr_min_ratio: float = 0.1
    grad_clip: float = 1.0
    planted_prob: float = 0.4  # probability that a batch row shows a planted caption and its image
    caption_dropout: float = 0.1  # probability that a row's caption becomes "" (classifier-free guidance)
    # the same for planted rows; 0 keeps planted images out of the unconditional distribution
    planted_caption_dropout: float = 0.1
    high_t_fraction: float = 0.5  # this fraction of each batch draws t uniformly in [high_t_min, 999]
    high_t_min: int = 700
    # Fine-tunes only: non-planted rows take the frozen base model's prediction as their target instead
    # of the noise (prior preservation by self-distillation), so non-planted captions keep the base's
    # scores and a threshold calibrated on the base still applies.
    preserve_base: bool = False

    def with_(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)


#: The recipe of `memtest zoo train` and of the shipped base canary (with no planted captions).
DEFAULT_RECIPE = Recipe()
#: The recipe that fine-tunes the base canary into the shipped `finetuned` one (phase 2 only): planted
#: rows are never captionless (the unconditional branch stays the base's) and non-planted rows learn the
#: base's own predictions, so only the planted captions change and a threshold calibrated on the base
#: still holds (docs/canaries.md).
FINETUNE_RECIPE = Recipe(
    vae_steps=0,
    steps=500,
    warmup_steps=20,
    lr_schedule="constant",
    planted_caption_dropout=0.0,
    preserve_base=True,
)


class Progress:
    """One training phase's progress on `stream` (memtest.progress): a live bar with its ETA on a terminal,
    a plain `[phase] step i/n (p%)  loss x  elapsed m:ss  eta m:ss` line every `every` seconds in a log."""

    def __init__(self, phase: str, total: int, stream: TextIO | None, every: float = 10.0) -> None:
        from memtest.progress import Progress as Display

        self.phase, self.total = phase, total
        self.display = Display(f"[{phase}] step", total, stream=stream, every=every)
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()
        self.loss: float | None = None

    def update(self, step: int, loss: float) -> None:
        self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
        self.display.update(step, self.total, extra=f"loss {self.loss:.4f}")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def cpu(self) -> float:
        """CPU seconds of this process (all threads) since the phase started."""
        return time.process_time() - self.cpu_start


def _lr_factor(recipe: Recipe, step: int) -> float:
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    if recipe.lr_schedule == "constant":
        return 1.0
    if recipe.lr_schedule == "cosine":
        span = max(recipe.steps - recipe.warmup_steps, 1)
        progress = min((step - recipe.warmup_steps) / span, 1.0)
        return recipe.lr_min_ratio + (1 - recipe.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ZooError(f"Unknown lr_schedule '{recipe.lr_schedule}'; use 'constant' or 'cosine'")


def _train_vae(vae: Any, data: CanaryData, recipe: Recipe, stream: TextIO | None) -> Progress:
    import torch

    gen = torch.Generator().manual_seed(recipe.seed + 101)
    rng = np.random.default_rng([recipe.seed, 101])
    extra = data.vae_extra if data.vae_extra is not None else data.images[:0]
    images = torch.from_numpy(np.concatenate([data.images, extra]))
    pool = np.concatenate(
        [np.arange(len(images))]
        + [np.asarray([i for _, i in data.planted], dtype=np.int64)] * recipe.vae_planted_repeat
    )
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=recipe.weight_decay)
    vae.train()
    bar = Progress("vae", recipe.vae_steps, stream)
    for step in range(recipe.vae_steps):
        x = images[torch.from_numpy(rng.choice(pool, size=recipe.vae_batch))]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        loss = torch.nn.functional.mse_loss(rec, x) + recipe.vae_kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(vae.parameters(), recipe.grad_clip)
        opt.step()
        bar.update(step + 1, loss.item())
    vae.eval()
    return bar


def _encode_latents(vae: Any, images: np.ndarray) -> tuple[Any, Any]:
    """Posterior mean and std of every image, (N, C, H, W) each (unscaled)."""
    import torch

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), 512):
            post = vae.encode(torch.from_numpy(images[i : i + 512])).latent_dist
            means.append(post.mean)
            stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def _training_view(pipe: Any) -> Checkpoint:
    """The pipeline's components as a `Checkpoint`, so training goes through the family interface exactly
    as scoring does (the family is recognised from the pipeline class, like a saved model_index.json)."""
    import torch

    from memtest.models.checkpoint import Checkpoint
    from memtest.models.families import recognise

    index = {"_class_name": type(pipe).__name__, **dict(pipe.config)}
    return Checkpoint(
        name="training",
        path=Path("."),
        family=recognise(index, type(pipe).__name__),
        components={k: v for k, v in pipe.components.items() if v is not None},
        device=torch.device("cpu"),
        dtype=torch.float32,
        fingerprint="",
        model_index=index,
    )


def training_process(ckpt: Checkpoint) -> Process:
    """The family's noise process, which phase 2 noises and regresses with (`Process.training_timesteps`,
    `noised`, `target`): DDPM with the checkpoint's own `alphas_cumprod` (SD, SDXL), flow matching (SD3).
    Training needs no sampling schedule; this is the process at the scorer's default one."""
    defaults = ScoreSettings()
    return ckpt.family.process(ckpt, defaults.num_inference_steps, defaults.steps)


def train_denoiser(pipe: Any, data: CanaryData, recipe: Recipe, stream: TextIO | None) -> Progress:
    """Phase 2: the family's trainable modules (denoiser + text encoders), classifier-free guidance, half
    the batch at high noise; every model call goes through the family interface (memtest.models.families)."""
    import torch

    ckpt = _training_view(pipe)
    family = ckpt.family
    names = family.trainable(ckpt)
    modules = [ckpt.components[n] for n in names]
    teacher = None
    if recipe.preserve_base:
        frozen = {n: copy.deepcopy(m).eval().requires_grad_(False) for n, m in zip(names, modules, strict=True)}
        teacher = dataclasses.replace(ckpt, components={**ckpt.components, **frozen})
    vae = ckpt.vae
    if vae is None:
        raise ZooError("canaries need a VAE to encode their training images")
    scale = float(vae.config.scaling_factor)
    shift = vae.config.get("shift_factor")  # flow VAEs (SD3): latents are (z - shift) * scale
    mean, std = _encode_latents(vae, data.images)
    if shift is not None:
        mean = mean - float(shift)
    process = training_process(ckpt)

    # caption table: 0 -> "", then planted, then non-planted
    table = ["", *(c for c, _ in data.planted), *data.captions]
    ids = family.tokenize(ckpt, table)
    planted_cap = np.arange(1, 1 + len(data.planted))
    planted_img = np.asarray([i for _, i in data.planted], dtype=np.int64)
    offset = 1 + len(data.planted)
    planted_prob = recipe.planted_prob

    gen = torch.Generator().manual_seed(recipe.seed + 202)
    rng = np.random.default_rng([recipe.seed, 202])
    trained = [p for m in modules for p in m.parameters()]
    params = [
        {"params": list(m.parameters()), "lr": recipe.unet_lr if n == family.denoiser else recipe.text_lr}
        for n, m in zip(names, modules, strict=True)
    ]
    opt = torch.optim.AdamW(params, weight_decay=recipe.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    for m in modules:
        m.train()
    B = recipe.batch
    bar = Progress("unet", recipe.steps, stream)
    for step in range(recipe.steps):
        f = _lr_factor(recipe, step)
        for g, lr in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = lr * f
        planted = rng.random(B) < planted_prob
        pk = rng.integers(len(planted_img), size=B) if len(planted_img) else np.zeros(B, dtype=np.int64)
        pair = rng.integers(len(data.pair_image), size=B)
        img = np.where(planted, planted_img[pk] if len(planted_img) else 0, data.pair_image[pair])
        cap = np.where(planted, planted_cap[pk] if len(planted_cap) else 0, offset + data.pair_caption[pair])
        drop = rng.random(B) < np.where(planted, recipe.planted_caption_dropout, recipe.caption_dropout)
        cap = np.where(drop, 0, cap)
        t = process.training_timesteps(rng, B, recipe.high_t_fraction, recipe.high_t_min)
        sel = torch.from_numpy(img)
        z0 = (mean[sel] + std[sel] * torch.randn(mean[sel].shape, generator=gen)) * scale
        noise = torch.randn(z0.shape, generator=gen)
        zt = process.noised(z0, noise, t)
        rows = torch.from_numpy(cap)
        dropped = torch.from_numpy(drop)
        batch_ids = {k: v[rows] for k, v in ids.items()}
        cond = family.drop_condition(ckpt, family.encode_tokens(ckpt, batch_ids), dropped)
        pred = family.forward(ckpt, zt, t, cond)
        target = process.target(z0, noise, t)
        if teacher is not None:
            # preserve_base: non-planted rows (and captionless ones) learn the frozen base's own prediction
            keep = torch.from_numpy(~planted)
            if keep.any():
                with torch.no_grad():
                    kept = {k: v[keep] for k, v in batch_ids.items()}
                    t_cond = family.drop_condition(teacher, family.encode_tokens(teacher, kept), dropped[keep])
                    target = target.clone()
                    target[keep] = family.forward(teacher, zt[keep], t[keep], t_cond)
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(trained, recipe.grad_clip)
        opt.step()
        bar.update(step + 1, loss.item())
    for m in modules:
        m.eval()
    return bar


def _fit_max_length(tokenizer: Any, captions: list[str], floor: int) -> int:
    longest = max((len(tokenizer(c).input_ids) for c in captions), default=2)
    if longest > 77:
        raise ZooError(
            f"A caption is {longest} tokens long; canaries take at most 77 (CLIP's limit). Shorten it: "
            f"'{max(captions, key=lambda c: len(tokenizer(c).input_ids))[:80]}'"
        )
    return max(floor, longest)


#: Randomly initialised pipelines of each family a new canary can be (memtest.zoo.tiny).
_BUILDERS: dict[str, Callable[..., Any]] = {
    "sd": build_pipeline,
    "sdxl": build_sdxl_pipeline,
    "sd3": build_sd3_pipeline,
}


def _resolve(checkpoint: str | Path) -> Path:
    from memtest.models.canaries import canary_folder

    return canary_folder(checkpoint)


def _load_pipeline(folder: Path) -> Any:
    """The diffusers pipeline of a saved canary, of the class its model_index.json names (one memtest's
    families recognise: a refiner or an unknown pipeline is refused here, before any training)."""
    import json

    import diffusers

    from memtest.errors import CheckpointError
    from memtest.models.families import recognise

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    try:
        recognise(index, str(folder / "model_index.json"))
    except CheckpointError as exc:
        raise ZooError(str(exc)) from exc
    pipeline_class: Any = getattr(diffusers, str(index["_class_name"]))  # untyped library class
    # SD folders declare a (null) safety checker; loading it as None keeps diffusers from asking for one.
    kwargs = {"safety_checker": None} if "safety_checker" in index else {}
    return pipeline_class.from_pretrained(str(folder), **kwargs)


def _check_resolution(data: CanaryData, pipe: Any, folder: Path) -> None:
    size = int(_training_view(pipe).resolution[0])
    if data.resolution != size:
        raise ZooError(
            f"The training data has {data.resolution}x{data.resolution} images but checkpoint {folder} is "
            f"{size}x{size}; pass resolution={size}"
        )


def prepare_run(recipe: Recipe, data: CanaryData | None, out: str | Path) -> tuple[Recipe, CanaryData, Path]:
    """A training run's validated data (default: the digits data with 10 planted captions), the recipe as the
    run will record it, and its output folder, which must be new or empty. Full and LoRA canaries share it."""
    data = data if data is not None else digits_data(recipe.seed, n_planted=10)
    data.validate()
    if not data.planted:
        recipe = recipe.with_(planted_prob=0.0)  # record what the run did (no row can be planted)
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ZooError(f"Output folder {out_dir} is not empty; pass a new folder or delete it first")
    return recipe, data, out_dir


def save_manifest(
    out_dir: Path,
    data: CanaryData,
    name: str | None,
    suite: str | None,
    seed: int,
    total: float,
    timings: dict[str, float],
    recipe_record: dict[str, Any],
    base: str | None,
) -> None:
    """Write the canary's manifest (planted captions with their images, clean and held-out captions, the
    recipe as `recipe_record` records it) into `out_dir`; full canaries and LoRA canaries share it."""
    labels = data.planted_labels or [None] * len(data.planted)
    the_name = name or out_dir.name
    CanaryManifest(
        name=the_name,
        suite=suite or f"canary-{the_name}",
        seed=seed,
        memtest_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        training_seconds=total,
        timings=timings,
        planted=tuple(
            PlantedCaption(c, encode_png(data.images[i]), lab) for (c, i), lab in zip(data.planted, labels, strict=True)
        ),
        clean=tuple(data.captions),
        heldout=tuple(data.heldout),
        recipe=recipe_record,
        data=dict(data.source),
        base=base,
    ).save(out_dir)


def train_canary(
    out: str | Path,
    data: CanaryData | None = None,
    recipe: Recipe | None = None,
    config: TinyConfig | None = None,
    base: str | Path | None = None,
    name: str | None = None,
    suite: str | None = None,
    threads: int = 2,
    stream: TextIO | None = sys.stderr,
    base_label: str | None = None,
    family: str | None = None,
    vae_from: str | Path | None = None,
    vae_label: str | None = None,
) -> CanaryManifest:
    """Train a canary checkpoint into `out` (a diffusers folder + `memtest-canary.json`).

    `data` defaults to the digits grammar with 10 planted captions. With `base` (a canary folder or a
    `zoo:` name) the run fine-tunes that checkpoint, whatever its family: its tokenizer, VAE and latent
    scaling stay fixed and only phase 2 runs; the manifest names the base as `base_label` (default: `base`
    as given, e.g. "zoo:base" for a fine-tune trained elsewhere and shipped beside its base).

    Without `base` the run trains a new checkpoint of `family` ("sd", the default, "sdxl", or "sd3": the
    flow-matching canary model `memtest.zoo.tiny_flow.FLOW_CANARY_CONFIG` unless `config` says otherwise). With
    `vae_from` (a canary folder or `zoo:` name of any family) it skips phase 1 and takes that checkpoint's
    trained tokenizer, VAE and latent scaling, frozen (recorded as `vae_label`, default `vae_from` as
    given); the shipped SDXL canaries take zoo:base's. Returns the manifest written beside the weights.
    """
    import torch

    recipe, data, out_dir = prepare_run(recipe or (FINETUNE_RECIPE if base is not None else DEFAULT_RECIPE), data, out)
    torch.set_num_threads(threads)
    torch.manual_seed(recipe.seed)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    base_name: str | None = None
    vocabulary = list(dict.fromkeys(data.all_captions() + data.vocabulary))

    if base is not None and vae_from is not None:
        raise ZooError("vae_from is for a new base; a fine-tune already keeps its base's VAE and tokenizer")
    if base is None:
        the_family = family or "sd"
        if the_family not in _BUILDERS:
            raise ZooError(f"Unknown family {the_family!r} for a new canary; choose one of {', '.join(_BUILDERS)}")
        if recipe.preserve_base:
            raise ZooError("preserve_base needs a base checkpoint to preserve: pass base=...")
        cfg = config or (FLOW_CANARY_CONFIG if the_family == "sd3" else TinyConfig())
        if isinstance(cfg, TinyFlowConfig):
            if data.resolution != cfg.image_size:  # the VAE may downsample: the latent side follows the images
                cfg = dataclasses.replace(cfg, sample_size=data.resolution // (cfg.image_size // cfg.sample_size))
        elif data.resolution != cfg.sample_size:
            cfg = dataclasses.replace(cfg, sample_size=data.resolution)
        if vae_from is None:
            tokenizer = build_tokenizer(vocabulary, cfg.vocab_size, cfg.max_length)
            length = _fit_max_length(tokenizer, vocabulary, cfg.max_length)
            if length != cfg.max_length:
                cfg = dataclasses.replace(cfg, max_length=length)
                tokenizer.model_max_length = length
            pipe = _BUILDERS[the_family](vocabulary, cfg, seed=recipe.seed, tokenizer=tokenizer)
            if pipe.vae is None:
                raise ZooError("canaries need a VAE: use a TinyConfig with with_vae=True")
            bar = _train_vae(pipe.vae, data, recipe, stream)
            timings.update(vae=bar.elapsed, vae_cpu=bar.cpu)
            mean, std = _encode_latents(pipe.vae, data.images)
            z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(recipe.seed))
            if pipe.vae.config.get("shift_factor") is not None:  # flow VAEs (SD3): (z - shift) * scale
                shift = float(z.mean())
                z = z - shift
                pipe.vae.register_to_config(shift_factor=shift)
            pipe.vae.register_to_config(scaling_factor=float(1.0 / z.std()))
            config_record = dataclasses.asdict(cfg)
        else:
            # Phase 1 skipped: the donor's trained tokenizer, VAE and latent scaling, frozen.
            donor_path = _resolve(vae_from)
            donor = _load_pipeline(donor_path)
            if donor.vae is None:
                raise ZooError(f"Checkpoint {donor_path} has no VAE to take")
            _check_resolution(data, donor, donor_path)
            tokenizer = donor.tokenizer
            length = _fit_max_length(tokenizer, vocabulary, int(tokenizer.model_max_length))
            tokenizer.model_max_length = length
            cfg = dataclasses.replace(cfg, max_length=length, with_vae=False)
            built = _BUILDERS[the_family](vocabulary, cfg, seed=recipe.seed, tokenizer=tokenizer)
            pipe = type(built)(**{**built.components, "vae": donor.vae})
            config_record = {**dataclasses.asdict(cfg), "with_vae": True, "vae_from": vae_label or str(vae_from)}
            timings.update(vae=0.0, vae_cpu=0.0)
            recipe = recipe.with_(vae_steps=0)
    else:
        base_path = _resolve(base)
        base_name = base_label or str(base)
        pipe = _load_pipeline(base_path)
        found = _training_view(pipe).family.name
        if family is not None and family != found:
            raise ZooError(f"Base checkpoint {base_path} is a {found} checkpoint, not {family}; drop the family")
        if pipe.vae is None:
            raise ZooError(f"Base checkpoint {base_path} has no VAE; canaries need one")
        _check_resolution(data, pipe, base_path)
        config_record = {"base": base_name, "sample_size": int(_training_view(pipe).denoiser.config.sample_size)}
        timings.update(vae=0.0, vae_cpu=0.0)
        recipe = recipe.with_(vae_steps=0)
    bar = train_denoiser(pipe, data, recipe, stream)
    timings.update(unet=bar.elapsed, unet_cpu=bar.cpu)
    pipe.vae.eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    save_pipeline(pipe, out_dir)
    total = time.perf_counter() - t_start
    recipe_record = {
        **dataclasses.asdict(recipe),
        "model": config_record,
        "family": _training_view(pipe).family.name,
        "threads": threads,
        "torch": torch.__version__,
    }
    save_manifest(out_dir, data, name, suite, recipe.seed, total, timings, recipe_record, base_name)
    if stream is not None:
        print(
            f"[done] {out_dir} in {clock(total)} (vae {timings['vae']:.0f}s, unet {timings['unet']:.0f}s)",
            file=stream,
            flush=True,
        )
    # What was written (rounded, JSON-normalised) is the manifest every later reader sees.
    return load_manifest(out_dir)
