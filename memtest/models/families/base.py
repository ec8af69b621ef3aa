"""The one interface every model family implements (../FAMILIES.md §1), and the conditioning it passes around.

A family decides, and nothing outside `memtest/families/` branches on it:

- how it is recognised (`model_index.json`'s `_class_name` and the component classes),
- which components it loads and which classes each may be,
- how prompts become conditioning (`Cond`), including the unconditional branch,
- how a model forward runs on latents and conditioning,
- which noise process the sampler follows (`Process`: DDPM here, flow matching elsewhere): the timesteps the
  metric looks at, the quantity the metrics differentiate, and one sampler step,
- how images are generated through the family's own diffusers pipeline: `Family.generate` is one template
  (the pipeline over the loaded components, the scorer's sampler, the unconditional branch computed without
  gradients); a family supplies only what differs, through the hooks `pipeline_options`, `sampler`,
  `pipeline_latents`, `call_options` and `conditioning_kwargs` (and the class attributes `pipeline_keys`,
  `negative_conditioning`, `repeats_embeddings`).

The canary trainer (memtest.zoo) trains on the same `Process` the scorer samples with: `training_timesteps`,
`noised` and `target` are the process's forward noising and regression target.

Conditioning is a `Cond`: a dict of tensors that all share the batch dimension, so the scorer can
concatenate, repeat and cache it without knowing what is inside (SD: one embedding; SDXL: embeddings,
pooled embeddings and `add_time_ids`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from memtest.errors import CheckpointError, ScoringError

Cond = dict[str, torch.Tensor]


def cond_cat(conds: Sequence[Cond]) -> Cond:
    """Rows of several conditionings, in order."""
    return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}


def cond_rows(cond: Cond, index: int | slice) -> Cond:
    sl = slice(index, index + 1) if isinstance(index, int) else index
    return {k: v[sl] for k, v in cond.items()}


def cond_repeat_interleave(cond: Cond, n: int) -> Cond:
    """Each row n times in a row (one prompt -> its n generations)."""
    return {k: v.repeat_interleave(n, dim=0) for k, v in cond.items()}


def cond_tile(cond: Cond, reps: int) -> Cond:
    """The whole batch `reps` times (finite differences stack their probe points this way)."""
    return {k: v.repeat(reps, *([1] * (v.dim() - 1))) for k, v in cond.items()}


def cond_expand(cond: Cond, rows: int) -> Cond:
    """A one-row conditioning broadcast to `rows` rows without copying."""
    return {k: v.expand(rows, *v.shape[1:]) for k, v in cond.items()}


def cond_len(cond: Cond) -> int:
    return int(next(iter(cond.values())).shape[0])


@dataclass(frozen=True)
class Component:
    """One folder of a checkpoint: the library its class comes from and the classes memtest accepts."""

    name: str
    library: str
    classes: tuple[str, ...]
    required: bool = True
    weights: bool = True  # has weight files (tokenizers and schedulers do not)
    #: Legacy class names a released checkpoint may declare, and the class that loads them (diffusers remaps
    #: them the same way; PixArt-Sigma's published transformer still says Transformer2DModel).
    loads_as: tuple[tuple[str, str], ...] = ()


class Process:
    """The noise process the sampler follows, at the timesteps the metric evaluates.

    `field` is what the metrics differentiate (s_Δ for DDPM models, the velocity difference for flow
    matching); `difference` is what `score_norm` measures. Both come from the raw model outputs of the two
    branches at the same x.

    The scorer walks the sampler's trajectory from x_T: first the `lead_timesteps` (guided steps taken
    without measuring; none for DDPM), then `timesteps`, measuring at each and stepping between them.
    """

    #: The timesteps the metric is measured at, as the model receives them: int for DDPM schedules, float
    #: (σ · num_train_timesteps) for flow matching. Recorded in scores and calibrations.
    timesteps: list[Any]
    #: Timesteps the sampler traverses before the first measured one, without measuring.
    lead_timesteps: tuple[Any, ...] = ()
    #: Whether a sampler step guides with the scale (classifier-free guidance). False for guidance-distilled
    #: models (Flux), whose sampler steps with the conditional output alone.
    cfg: bool = True

    def guide(self, o_c: torch.Tensor, o_0: torch.Tensor, scale: float) -> torch.Tensor:
        """The output the sampler steps with, from the two branches' raw outputs."""
        if not self.cfg:
            return o_c
        return o_0 + scale * (o_c - o_0)

    def field(self, o_c: torch.Tensor, o_0: torch.Tensor, x: torch.Tensor, t: int) -> torch.Tensor:
        raise NotImplementedError

    def difference(self, o_c: torch.Tensor, o_0: torch.Tensor, x: torch.Tensor, t: int) -> torch.Tensor:
        raise NotImplementedError

    def step(self, guided: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def identity(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- training: the forward process a canary is trained on (memtest.zoo) --------------------------------
    def training_timesteps(
        self, rng: np.random.Generator, batch: int, high_fraction: float, high_min: int
    ) -> torch.Tensor:
        """One training timestep per row, as the model receives it: `high_fraction` of the batch at the high
        noise levels [high_min, T) where the first sampling step looks, the rest from the process's own
        training density (T = the schedule's number of training timesteps)."""
        raise NotImplementedError

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t of clean latents x0 under noise ε, one timestep per row."""
        raise NotImplementedError

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the model's raw output regresses at `noised(x0, noise, t)`."""
        raise NotImplementedError


def rows_view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-row values shaped to broadcast over a batch like `like` (B, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def eps_from_output(out: torch.Tensor, x: torch.Tensor, prediction_type: str, abar: float) -> torch.Tensor:
    """The noise prediction ε from a DDPM-family model output of any prediction type."""
    sigma = math.sqrt(1.0 - abar)
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        return sigma * x + math.sqrt(abar) * out
    if prediction_type == "sample":
        return (x - math.sqrt(abar) * out) / sigma
    raise unsupported_prediction(prediction_type)


def unsupported_prediction(prediction_type: str) -> ScoringError:
    return ScoringError(
        f"Unsupported prediction_type {prediction_type!r} in the scheduler config; "
        "memtest supports epsilon, v_prediction and sample."
    )


class DDPMProcess(Process):
    """DDIM over the checkpoint's own DDPM noise schedule (SPEC.md §2): s_Δ = −(ε_c − ε_0)/σ_t."""

    def __init__(self, scheduler_config: Any, prediction_type: str, num_inference_steps: int, steps: int) -> None:
        from diffusers import DDIMScheduler

        # Scores follow the paper's DDIM sampler built from the checkpoint's own noise schedule.
        self.scheduler = DDIMScheduler.from_config(scheduler_config)
        self.scheduler.set_timesteps(num_inference_steps)
        self.timesteps = [int(t) for t in self.scheduler.timesteps[:steps]]
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(torch.float64)
        self.prediction_type = prediction_type

    def _abar(self, t: int) -> float:
        return float(self.alphas_cumprod[t])

    def difference(self, o_c: torch.Tensor, o_0: torch.Tensor, x: torch.Tensor, t: int) -> torch.Tensor:
        abar = self._abar(t)
        return eps_from_output(o_c, x, self.prediction_type, abar) - eps_from_output(o_0, x, self.prediction_type, abar)

    def field(self, o_c: torch.Tensor, o_0: torch.Tensor, x: torch.Tensor, t: int) -> torch.Tensor:
        sigma = math.sqrt(1.0 - self._abar(t))
        return -self.difference(o_c, o_0, x, t) / sigma

    def step(self, guided: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.scheduler.step(guided, t, x, return_dict=False)[0]
        return out

    @property
    def init_noise_sigma(self) -> float:
        return float(getattr(self.scheduler, "init_noise_sigma", 1.0))

    def identity(self) -> dict[str, Any]:
        return {"scheduler": "DDIMScheduler", "prediction_type": self.prediction_type}

    def training_timesteps(
        self, rng: np.random.Generator, batch: int, high_fraction: float, high_min: int
    ) -> torch.Tensor:
        """Integer timesteps (int64): `high_fraction` of the batch uniform in [high_min, T), the rest in [0, T)."""
        T = len(self.alphas_cumprod)
        n_high = round(batch * high_fraction)
        t_high = rng.integers(high_min, T, size=n_high)
        t_all = rng.integers(0, T, size=batch - n_high)
        return torch.from_numpy(np.concatenate([t_high, t_all]))

    def _abar_rows(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        # ᾱ_t in the latents' dtype (the schedule's float32 values: the float64 copy holds them exactly)
        return rows_view(self.alphas_cumprod[t].to(like.dtype), like)

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """√ᾱ_t x0 + √(1 − ᾱ_t) ε, computed in x0's dtype."""
        a = self._abar_rows(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε (epsilon models), v = √ᾱ_t ε − √(1 − ᾱ_t) x0 (v-prediction) or x0 (sample)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        if self.prediction_type == "v_prediction":
            a = self._abar_rows(t, x0)
            return a.sqrt() * noise - (1 - a).sqrt() * x0
        raise unsupported_prediction(self.prediction_type)


class Family:
    """One model family. Subclasses set the class attributes and implement the conditioning and forward."""

    #: Short name, recorded in results ("sd", "sdxl", ...).
    name: ClassVar[str]
    #: Human description for errors and reports.
    title: ClassVar[str]
    #: `model_index.json` `_class_name`s this family loads.
    pipelines: ClassVar[tuple[str, ...]]
    #: Pipelines of this family memtest refuses, with the reason (e.g. SDXL's refiner).
    refused: ClassVar[dict[str, str]] = {}
    #: Components in load order.
    components: ClassVar[tuple[Component, ...]]
    #: The component that denoises (differentiated by the metrics).
    denoiser: ClassVar[str] = "unet"
    #: Conditioning entries a prompt-embedding optimisation may change (the rest are fixed, e.g. time ids).
    embedding_keys: ClassVar[tuple[str, ...]] = ("prompt_embeds",)

    # -- recognition --------------------------------------------------------------------------------
    @classmethod
    def recognises(cls, index: dict[str, Any]) -> bool:
        """Whether `model_index.json` declares one of this family's pipelines (or a refused one)."""
        name = str(index.get("_class_name", ""))
        return name in cls.pipelines or name in cls.refused

    @classmethod
    def check_index(cls, index: dict[str, Any], where: str) -> None:
        """Refuse pipelines of this family memtest does not audit, with the reason."""
        name = str(index.get("_class_name", ""))
        if name in cls.refused:
            raise CheckpointError(f"'{where}' is a {name}: {cls.refused[name]}")

    # -- shapes and identity ------------------------------------------------------------------------
    def latent_shape(self, ckpt: Checkpoint) -> tuple[int, int, int]:
        size = ckpt.denoiser.config.sample_size
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        return (int(ckpt.denoiser.config.in_channels), h, w)

    def prediction_type(self, ckpt: Checkpoint) -> str:
        return str(ckpt.scheduler.config.get("prediction_type", "epsilon"))

    def identity(self, ckpt: Checkpoint) -> dict[str, Any]:
        """Extra calibration-identity keys of this family (none for SD, so older calibrations stay valid)."""
        return {"family": self.name}

    def summary(self, ckpt: Checkpoint) -> dict[str, Any]:
        """Plain-JSON facts for reports."""
        return {}

    # -- the process --------------------------------------------------------------------------------
    def process(self, ckpt: Checkpoint, num_inference_steps: int, steps: int, flow_steps: int | None = None) -> Process:
        """The sampler's process; `flow_steps` (flow matching only) are the Euler steps before measuring."""
        if flow_steps is not None:
            raise ScoringError(
                f"flow_steps={flow_steps} applies to flow-matching checkpoints only; {ckpt.name} is a {self.title} "
                "checkpoint with a DDPM noise schedule, measured at the sampler's first step. Leave flow_steps unset."
            )
        if not hasattr(ckpt.scheduler, "alphas_cumprod"):
            raise CheckpointError(
                f"Scheduler {type(ckpt.scheduler).__name__} of {ckpt.name} has no alphas_cumprod; the "
                f"{self.title} family needs a DDPM-family scheduler."
            )
        return DDPMProcess(ckpt.scheduler.config, self.prediction_type(ckpt), num_inference_steps, steps)

    # -- conditioning and forward -------------------------------------------------------------------
    def tokenize(self, ckpt: Checkpoint, prompts: Sequence[str]) -> Cond:
        """Token ids of each prompt for every text encoder, padded as the family's pipeline pads them."""
        raise NotImplementedError

    def encode_tokens(self, ckpt: Checkpoint, ids: Cond) -> Cond:
        """Conditioning from token ids (differentiable: training goes through it)."""
        raise NotImplementedError

    def encode(self, ckpt: Checkpoint, prompts: Sequence[str]) -> Cond:
        """Conditioning of each prompt (callers that score wrap it in no_grad)."""
        return self.encode_tokens(ckpt, self.tokenize(ckpt, prompts))

    def drop_condition(self, ckpt: Checkpoint, cond: Cond, dropped: torch.Tensor) -> Cond:
        """Training's caption dropout: rows where `dropped` is set (already encoded from "") become the
        unconditional branch the sampler will use."""
        return cond

    def trainable(self, ckpt: Checkpoint) -> list[str]:
        """Components a canary trains (the denoiser first, then the text encoders)."""
        return [self.denoiser, *(c.name for c in self.components if c.name.startswith("text_encoder"))]

    def unconditional(self, ckpt: Checkpoint, empty: Cond) -> Cond:
        """One row: the unconditional branch of classifier-free guidance, given the conditioning of ""
        (callers cache that one, so every path sees the same bits)."""
        return empty

    def forward(self, ckpt: Checkpoint, x: torch.Tensor, t: float | torch.Tensor, cond: Cond) -> torch.Tensor:
        """The denoiser's raw output for latents x (model dtype) under conditioning rows `cond`, at timestep `t` as
        the process gives it: one for every row (scoring), or a tensor of one per row (training)."""
        raise NotImplementedError

    # -- generation ---------------------------------------------------------------------------------
    #: Conditioning entries generation hands the pipeline, each as `<key>=` (and `negative_<key>=`).
    pipeline_keys: ClassVar[tuple[str, ...]] = ("prompt_embeds",)
    #: Whether generation from conditioning passes the unconditional branch (`negative_<key>`); False for
    #: guidance-distilled families whose pipeline steps with the conditional output alone (Flux).
    negative_conditioning: ClassVar[bool] = True
    #: Whether the pipeline repeats given embeddings `num_images_per_prompt` times (the DDPM pipelines); the
    #: flow pipelines do not, so they are given one row per image.
    repeats_embeddings: ClassVar[bool] = True

    def pipeline_class(self) -> Any:
        """The diffusers pipeline class generation builds: the family's first declared pipeline."""
        import diffusers

        return getattr(diffusers, self.pipelines[0])

    def pipeline_options(self, ckpt: Checkpoint) -> dict[str, Any]:
        """Constructor arguments of the pipeline beyond the family's components."""
        return {}

    def pipeline(self, ckpt: Checkpoint) -> Any:
        """The family's diffusers pipeline over the loaded components (for generation and adapters)."""
        from memtest.models.loading import quiet_libraries

        parts = {c.name: ckpt.components.get(c.name) for c in self.components}
        # Importing a pipeline class makes transformers warn that its image processors fall back from
        # torchvision to PIL; memtest uses none of them, so the warning is noise on every run.
        with quiet_libraries():
            pipe = self.pipeline_class()(**parts, **self.pipeline_options(ckpt))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sampler(self, ckpt: Checkpoint) -> Any:
        """The scheduler generation samples with: the scorer's DDIM from the checkpoint's own noise schedule, so
        the first step is the one the detector looks at."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(ckpt.scheduler.config)

    def pipeline_latents(self, ckpt: Checkpoint, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        """Initial latents as the pipeline takes them: the DDPM pipelines multiply given latents by the
        sampler's init_noise_sigma, and ours already carry it."""
        sigma0 = float(getattr(pipe.scheduler, "init_noise_sigma", 1.0))
        return (latents.detach() / sigma0).to(ckpt.device, ckpt.dtype)

    def call_options(self, ckpt: Checkpoint, guidance_scale: float) -> dict[str, Any]:
        """Pipeline call arguments that are neither the prompt, its conditioning, the latents nor the steps."""
        h, w = ckpt.resolution
        return {"guidance_scale": guidance_scale, "height": h, "width": w}

    def conditioning_kwargs(self, ckpt: Checkpoint, cond: Cond, null: Cond | None, images: int) -> dict[str, Any]:
        """The pipeline call's conditioning for `images` images of one conditioning row: `pipeline_keys` from
        `cond` and, as `negative_<key>`, from the unconditional branch `null` (None: the family passes none)."""
        per_prompt = images
        if not self.repeats_embeddings:
            cond = cond_expand(cond_rows(cond, 0), images)
            null = None if null is None else cond_expand(cond_rows(null, 0), images)
            per_prompt = 1
        out: dict[str, Any] = {"num_images_per_prompt": per_prompt}
        for key in self.pipeline_keys:
            out[key] = pipeline_tensor(ckpt, cond[key])
            if null is not None:
                out[f"negative_{key}"] = pipeline_tensor(ckpt, null[key])
        return out

    def generate(
        self,
        ckpt: Checkpoint,
        latents: torch.Tensor,
        *,
        prompt: str | None,
        cond: Cond | None,
        guidance_scale: float,
        num_inference_steps: int,
    ) -> Any:
        """Images (n, H, W, 3) in [0, 1] from initial latents x_T (which already carry init_noise_sigma), through
        the family's pipeline with its `sampler`: of `prompt` (the pipeline encodes it), or of the conditioning
        row `cond` with the family's unconditional branch (computed without gradients)."""
        need_vae(ckpt)
        images = int(latents.shape[0])
        kwargs = self.call_options(ckpt, guidance_scale)
        if cond is None:
            kwargs.update(prompt=prompt, num_images_per_prompt=images)
        else:
            null = None
            if self.negative_conditioning:
                with torch.no_grad():
                    null = self.unconditional(ckpt, self.encode(ckpt, [""]))
            kwargs.update(self.conditioning_kwargs(ckpt, cond, null, images))
        pipe = self.pipeline(ckpt)
        pipe.scheduler = self.sampler(ckpt)
        with torch.no_grad():
            out = pipe(
                num_inference_steps=num_inference_steps,
                latents=self.pipeline_latents(ckpt, pipe, latents),
                output_type="np",
                **kwargs,
            )
        return np.asarray(out.images, dtype=np.float32)

    def reproduce(self, ckpt: Checkpoint, images: np.ndarray) -> np.ndarray:
        """Images (k, H, W, 3) in [0, 1] as the checkpoint can output them: decode(encode(x)) through its VAE with
        the posterior mean, one image at a time (so a batch gives what each image alone gives). A latent model can
        only output decoded latents, so a perfect copy of a training image is its round trip, not the image."""
        need_vae(ckpt)
        vae = ckpt.vae
        assert vae is not None  # need_vae
        out = []
        for image in np.asarray(images, dtype=np.float32):
            arr = np.ascontiguousarray(image.transpose(2, 0, 1))[None] * 2.0 - 1.0
            x = torch.from_numpy(arr).to(ckpt.device, ckpt.dtype)
            with torch.no_grad():
                rec = vae.decode(vae.encode(x).latent_dist.mean).sample
            out.append(np.clip((rec[0].float().cpu().numpy().transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0))
        return np.asarray(out, dtype=np.float32).reshape(len(out), *np.shape(images)[1:])


def need_vae(ckpt: Checkpoint) -> None:
    if ckpt.vae is None:
        raise CheckpointError(
            f"Checkpoint {ckpt.name} has no VAE, so it cannot decode images; scoring works without "
            "one, but generation and mitigation images need a `vae/` folder."
        )


def pipeline_tensor(ckpt: Checkpoint, value: torch.Tensor) -> torch.Tensor:
    """A conditioning entry as a pipeline takes it: detached, on the checkpoint's device, in its dtype when
    floating (attention masks keep their integer dtype)."""
    if value.is_floating_point():
        return value.detach().to(ckpt.device, ckpt.dtype)
    return value.detach().to(ckpt.device)


def component_class(index: dict[str, Any], comp: Component, where: str) -> Any:
    """The class `model_index.json` names for `comp`, if the family allows it."""
    entry = index.get(comp.name)
    if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
        raise CheckpointError(f"'{where}' declares no '{comp.name}' component in model_index.json.")
    lib, cls_name = entry
    if cls_name not in comp.classes:
        raise CheckpointError(
            f"Component '{comp.name}' is a {lib}.{cls_name}; memtest needs one of {', '.join(comp.classes)}. "
            "Check model_index.json, or convert the checkpoint to the family's layout."
        )
    module = __import__(comp.library)
    name = str(cls_name)
    return getattr(module, dict(comp.loads_as).get(name, name))


def declared(index: dict[str, Any], name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and len(entry) == 2 and bool(entry[1])


@dataclass
class Checkpoint:
    """The loaded components of one checkpoint, its family, and what identifies it.

    `components` maps the diffusers folder names (`unet`, `text_encoder`, `tokenizer_2`, ...) to loaded
    objects; the family (memtest.models.families) knows what each means.
    """

    name: str
    path: Path
    family: Family
    components: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    model_index: dict[str, Any] = field(default_factory=dict)
    #: LoRA adapters applied on the base weights (memtest.models.adapters records), in order.
    adapters: list[dict[str, Any]] = field(default_factory=list)

    # Components most code reads by name (every family so far has them).
    @property
    def denoiser(self) -> Any:
        return self.components[self.family.denoiser]

    @property
    def unet(self) -> Any:
        return self.components.get("unet")

    @property
    def text_encoder(self) -> Any:
        return self.components.get("text_encoder")

    @property
    def tokenizer(self) -> Any:
        return self.components.get("tokenizer")

    @property
    def scheduler(self) -> Any:
        return self.components["scheduler"]

    @property
    def vae(self) -> Any | None:
        return self.components.get("vae")

    @property
    def prediction_type(self) -> str:
        return self.family.prediction_type(self)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.family.latent_shape(self)

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
        encoders = [n for n, c in self.components.items() if n.startswith("text_encoder") and c is not None]
        summary = {
            "family": self.family.name,
            "pipeline": str(self.model_index.get("_class_name", "")),
            "prediction_type": self.prediction_type,
            "scheduler": type(self.scheduler).__name__,
            "beta_schedule": str(self.scheduler.config.get("beta_schedule", "")),
            "latent_shape": list(self.latent_shape),
            "resolution": list(self.resolution),
            "unet_parameters": int(sum(p.numel() for p in self.denoiser.parameters())),
            "text_encoder": type(self.text_encoder).__name__,
            "text_encoders": [type(self.components[n]).__name__ for n in encoders],
            "tokenizer_max_length": int(self.tokenizer.model_max_length),
            "has_vae": self.vae is not None,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "adapters": [dict(a) for a in self.adapters],
        }
        summary.update(self.family.summary(self))
        return summary

    def pipeline(self) -> Any:
        """The family's diffusers pipeline over these components, for generating images."""
        return self.family.pipeline(self)
