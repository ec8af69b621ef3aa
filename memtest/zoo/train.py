"""Train a tiny text-to-image canary checkpoint on CPU (imports torch; `memtest.zoo` loads it lazily).

Two phases, both seeded:

1. the VAE (MSE + a small KL term; planted images over-represented), after which `scaling_factor` is set
   to 1 / std of the latents;
2. the UNet and the text encoder together, with classifier-free-guidance training (captions dropped to
   "" with some probability) and half of each batch at high noise levels, where the first sampling step
   (t = 981) looks.

A fine-tune starts from a trained canary (its tokenizer, VAE and scaling are kept frozen) and runs
phase 2 only. Progress (steps, loss, elapsed, ETA) goes to stderr.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from memtest.errors import ZooError
from memtest.zoo.data import CanaryData, digits_data
from memtest.zoo.manifest import CanaryManifest, PlantedCaption, encode_png, load_manifest
from memtest.zoo.tiny import TinyConfig, build_pipeline, build_tokenizer, save_pipeline


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

    @staticmethod
    def _clock(seconds: float) -> str:
        from memtest.progress import clock

        return clock(seconds)

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


def _tokenize(tokenizer: Any, captions: list[str]) -> Any:
    # Exactly what StableDiffusionPipeline.encode_prompt does, so training and sampling see the same ids.
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


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


def _train_denoiser(pipe: Any, data: CanaryData, recipe: Recipe, stream: TextIO | None) -> Progress:
    """Phase 2: UNet + text encoder, classifier-free guidance, half the batch at high noise."""
    import torch

    unet, te, vae = pipe.unet, pipe.text_encoder, pipe.vae
    teacher = None
    if recipe.preserve_base:
        teacher = (copy.deepcopy(unet).eval().requires_grad_(False), copy.deepcopy(te).eval().requires_grad_(False))
    scale = float(vae.config.scaling_factor)
    mean, std = _encode_latents(vae, data.images)
    abar = pipe.scheduler.alphas_cumprod.to(torch.float32)
    T = len(abar)

    # caption table: 0 -> "", then planted, then non-planted
    table = ["", *(c for c, _ in data.planted), *data.captions]
    ids = _tokenize(pipe.tokenizer, table)
    planted_cap = np.arange(1, 1 + len(data.planted))
    planted_img = np.asarray([i for _, i in data.planted], dtype=np.int64)
    offset = 1 + len(data.planted)
    planted_prob = recipe.planted_prob

    gen = torch.Generator().manual_seed(recipe.seed + 202)
    rng = np.random.default_rng([recipe.seed, 202])
    trained = list(unet.parameters()) + list(te.parameters())
    params = [
        {"params": list(unet.parameters()), "lr": recipe.unet_lr},
        {"params": list(te.parameters()), "lr": recipe.text_lr},
    ]
    opt = torch.optim.AdamW(params, weight_decay=recipe.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    unet.train()
    te.train()
    B = recipe.batch
    n_high = round(B * recipe.high_t_fraction)
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
        t_high = rng.integers(recipe.high_t_min, T, size=n_high)
        t_all = rng.integers(0, T, size=B - n_high)
        t = torch.from_numpy(np.concatenate([t_high, t_all]))
        sel = torch.from_numpy(img)
        z0 = (mean[sel] + std[sel] * torch.randn(mean[sel].shape, generator=gen)) * scale
        noise = torch.randn(z0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        emb = te(ids[torch.from_numpy(cap)])[0]
        pred = unet(zt, t, emb).sample
        target = noise
        if teacher is not None:
            keep = torch.from_numpy(~planted)
            if keep.any():
                with torch.no_grad():
                    t_emb = teacher[1](ids[torch.from_numpy(cap)][keep])[0]
                    target = noise.clone()
                    target[keep] = teacher[0](zt[keep], t[keep], t_emb).sample
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(trained, recipe.grad_clip)
        opt.step()
        bar.update(step + 1, loss.item())
    unet.eval()
    te.eval()
    return bar


def _fit_max_length(tokenizer: Any, captions: list[str], floor: int) -> int:
    longest = max((len(tokenizer(c).input_ids) for c in captions), default=2)
    if longest > 77:
        raise ZooError(
            f"A caption is {longest} tokens long; canaries take at most 77 (CLIP's limit). Shorten it: "
            f"'{max(captions, key=lambda c: len(tokenizer(c).input_ids))[:80]}'"
        )
    return max(floor, longest)


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
) -> CanaryManifest:
    """Train a canary checkpoint into `out` (a diffusers folder + `memtest-canary.json`).

    `data` defaults to the digits grammar with 10 planted captions. With `base` (a canary folder or a
    `zoo:` name) the run fine-tunes that checkpoint: its tokenizer, VAE and latent scaling stay fixed
    and only phase 2 runs; the manifest names the base as `base_label` (default: `base` as given, e.g.
    "zoo:base" for a fine-tune trained elsewhere and shipped beside its base). Returns the manifest
    written beside the weights.
    """
    import torch

    recipe = recipe or (FINETUNE_RECIPE if base is not None else DEFAULT_RECIPE)
    data = data if data is not None else digits_data(recipe.seed, n_planted=10)
    data.validate()
    if not data.planted:
        recipe = recipe.with_(planted_prob=0.0)  # record what the run did (no row can be planted)
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ZooError(f"Output folder {out_dir} is not empty; pass a new folder or delete it first")
    torch.set_num_threads(threads)
    torch.manual_seed(recipe.seed)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    base_name: str | None = None
    vocabulary = list(dict.fromkeys(data.all_captions() + data.vocabulary))

    if base is None:
        cfg = config or TinyConfig()
        if data.resolution != cfg.sample_size:
            cfg = dataclasses.replace(cfg, sample_size=data.resolution)
        tokenizer = build_tokenizer(vocabulary, cfg.vocab_size, cfg.max_length)
        length = _fit_max_length(tokenizer, vocabulary, cfg.max_length)
        if length != cfg.max_length:
            cfg = dataclasses.replace(cfg, max_length=length)
            tokenizer.model_max_length = length
        pipe = build_pipeline(vocabulary, cfg, seed=recipe.seed, tokenizer=tokenizer)
        if pipe.vae is None:
            raise ZooError("canaries need a VAE: use a TinyConfig with with_vae=True")
        bar = _train_vae(pipe.vae, data, recipe, stream)
        timings.update(vae=bar.elapsed, vae_cpu=bar.cpu)
        mean, std = _encode_latents(pipe.vae, data.images)
        z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(recipe.seed))
        pipe.vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        config_record = dataclasses.asdict(cfg)
        if recipe.preserve_base:
            raise ZooError("preserve_base needs a base checkpoint to preserve: pass base=...")
    else:
        import diffusers

        from memtest.zoo import resolve_checkpoint

        base_path = resolve_checkpoint(base)
        base_name = base_label or str(base)
        sd_pipeline: Any = diffusers.StableDiffusionPipeline  # untyped library class
        pipe = sd_pipeline.from_pretrained(str(base_path), safety_checker=None)
        if pipe.vae is None:
            raise ZooError(f"Base checkpoint {base_path} has no VAE; canaries need one")
        size = int(pipe.unet.config.sample_size)
        if data.resolution != size:
            raise ZooError(
                f"The fine-tune data has {data.resolution}x{data.resolution} images but base {base_path} is "
                f"{size}x{size}; pass resolution={size}"
            )
        config_record = {"base": str(base), "sample_size": size}
        timings.update(vae=0.0, vae_cpu=0.0)
        recipe = recipe.with_(vae_steps=0)
    bar = _train_denoiser(pipe, data, recipe, stream)
    timings.update(unet=bar.elapsed, unet_cpu=bar.cpu)
    pipe.vae.eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    save_pipeline(pipe, out_dir)
    total = time.perf_counter() - t_start
    labels = data.planted_labels or [None] * len(data.planted)
    the_name = name or out_dir.name
    manifest = CanaryManifest(
        name=the_name,
        suite=suite or f"canary-{the_name}",
        seed=recipe.seed,
        memtest_version=_version(),
        created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        training_seconds=total,
        timings=timings,
        planted=tuple(
            PlantedCaption(c, encode_png(data.images[i]), lab) for (c, i), lab in zip(data.planted, labels, strict=True)
        ),
        clean=tuple(data.captions),
        heldout=tuple(data.heldout),
        recipe={
            **dataclasses.asdict(recipe),
            "model": config_record,
            "threads": threads,
            "torch": torch.__version__,
        },
        data=dict(data.source),
        base=base_name,
    )
    manifest.save(out_dir)
    if stream is not None:
        print(
            f"[done] {out_dir} in {Progress._clock(total)} (vae {timings['vae']:.0f}s, unet {timings['unet']:.0f}s)",
            file=stream,
            flush=True,
        )
    # What was written (rounded, JSON-normalised) is the manifest every later reader sees.
    return load_manifest(out_dir)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memtest")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "0+unknown"
