"""Detection cost against its floor, and memory, on a tiny model, a canary or a Stable Diffusion-sized UNet.

    .venv/bin/python scripts/benchmark.py [--model tiny|canary|sd] [--device cpu|cuda] [--dtype float32|bfloat16]
                                          [--prompts 1,4,16] [--n 1,4] [--methods fd,fd-forward,jvp,score_norm]
                                          [--reps 5] [--threads N] [--quick] [--json out.json]
                                          [--checkpoint zoo:finetuned] [--channels-last] [--no-first-call]

The floor is what any first-step sharpness detector must spend: two bare batched UNet forwards of 2n rows per
prompt (conditional and unconditional, at x and at one probe point) on precomputed inputs under
`torch.inference_mode()`. Each memtest method is timed through `Scorer.score` on the same prompts and settings,
with embeddings cached (the steady state of a suite run), and reported as a ratio to the floor. The floor and
the methods are interleaved in rounds (floor, fd, fd-forward, ... then the reverse order), and each ratio is
the median of the per-round ratios, so a machine whose load changes during the run still gives ratios that
hold. The first call of a fresh `Scorer` (which encodes the prompts) is timed separately, and so is the very
first call in the process (lazy initialisation included).

Peak memory: on CUDA `torch.cuda.max_memory_allocated` per measurement; on CPU the peak resident set size
sampled every 2 ms by a background thread during each measurement, plus the process peak from
`resource.getrusage`. docs/performance.md holds the numbers and how they were taken.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SCHEMA = "memtest.benchmark/1"
METHODS = ("fd", "fd-forward", "jvp", "score_norm")
#: The other detectors (memtest.detection.detectors), timed the same way with their defaults: `--methods` may name
#: them. Their model evaluations per prompt depend on the detector (generation for tiled_l2 and bright_ending), so
#: the table shows the measured ratio only.
DETECTORS = ("tiled_l2", "anisotropy", "attention_entropy", "bright_ending")
#: Model evaluations (batched forwards of 2n rows per prompt, or their equivalent) each method needs.
EVALUATIONS = {"floor": 2, "fd": 3, "fd-forward": 2, "jvp": 3, "score_norm": 1}

# Prompts in the style of the canaries' captions; any text tokenizes (every character is in the vocabulary).
STYLES = ("photo", "painting", "drawing", "sketch", "poster", "picture", "print", "scan", "render", "image")
SUBJECTS = ("digit", "red digit", "blue digit", "even number", "odd number", "small number", "large number")
PROMPTS = [f"a {style} of a {subject}" for subject in SUBJECTS for style in STYLES]


# -- models --------------------------------------------------------------------------------------------
def _checkpoint(
    name: str, unet: Any, text_encoder: Any, tokenizer: Any, scheduler: Any, device: Any, dtype: Any
) -> Any:
    from memtest.models.checkpoint import Checkpoint, place
    from memtest.models.families import family_named

    return place(
        Checkpoint(
            name=name,
            path=Path(f"<{name}: random weights, in memory>"),
            family=family_named("sd"),
            components={"unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler},
            device=device,
            dtype=dtype,
            fingerprint=f"random-{name}",
        )
    )


def build_tiny(device: Any, dtype: Any, quick: bool) -> Any:
    """The canaries' architecture (memtest.zoo.tiny.TinyConfig) with random weights; smaller with --quick."""
    import torch

    from memtest.zoo.tiny import TinyConfig, build_scheduler, build_text_encoder, build_tokenizer, build_unet

    cfg = TinyConfig(with_vae=False)
    if quick:
        cfg = TinyConfig(sample_size=8, block_out_channels=(16, 32), cross_attention_dim=16, text_hidden=16,
                         max_length=8, with_vae=False)  # fmt: skip
    torch.manual_seed(0)
    tokenizer = build_tokenizer(PROMPTS, cfg.vocab_size, cfg.max_length)
    name = "tiny-quick" if quick else "tiny"
    return _checkpoint(
        name, build_unet(cfg), build_text_encoder(cfg, tokenizer), tokenizer, build_scheduler(cfg), device, dtype
    )


def build_sd(device: Any, dtype: Any) -> Any:
    """Stable Diffusion v1's UNet and CLIP text encoder, from configs, with random weights (no hub).

    64x64x4 latents, 77 tokens, cross_attention_dim 768, block_out_channels (320, 640, 1280, 1280):
    UNet2DConditionModel's defaults are SD v1's layout. The text encoder has CLIP ViT-L/14's text sizes
    over the offline tokenizer's vocabulary.
    """
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from memtest.zoo.tiny import TinyConfig, build_scheduler, build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer(PROMPTS, vocab_size=400, max_length=77)
    build_device = device if device.type == "cuda" else torch.device("cpu")
    with build_device:
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                projection_dim=768,
                vocab_size=len(tokenizer),
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    # SD v1's sampling schedule (scaled_linear 0.00085-0.012, leading spacing, first step t=981).
    return _checkpoint("sd", unet, text_encoder, tokenizer, build_scheduler(TinyConfig()), device, dtype)


def build_model(kind: str, device: Any, dtype: Any, quick: bool, checkpoint: str) -> Any:
    if kind == "tiny":
        return build_tiny(device, dtype, quick)
    if kind == "sd":
        return build_sd(device, dtype)
    from memtest.models.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint, device=device, dtype=dtype)


def canary_accuracy(ckpt: Any, n: int, heldout: int, batch: int) -> dict[str, Any] | None:
    """fd and fd-forward against the exact jvp on a canary's planted and held-out captions.

    Per-generation relative errors by group, and each method's AUC and TPR at FPR <= 1% (planted vs
    held-out): whether the cheaper method would change a verdict.
    """
    from memtest.detection.scoring import Scorer
    from memtest.models.canaries import MANIFEST_NAME, load_manifest

    if not (ckpt.path / MANIFEST_NAME).is_file():
        return None
    manifest = load_manifest(ckpt.path / MANIFEST_NAME)
    groups = {"planted": list(manifest.planted_captions), "heldout": list(manifest.heldout[:heldout])}
    prompts = groups["planted"] + groups["heldout"]
    scores = {m: Scorer(ckpt, settings_for(m, n, batch)).score(prompts) for m in ("jvp", "fd", "fd-forward")}
    out: dict[str, Any] = {"n": n, "planted": len(groups["planted"]), "heldout": len(groups["heldout"])}
    planted = len(groups["planted"])
    for m, res in scores.items():
        entry: dict[str, Any] = roc_numbers([r.score for r in res[:planted]], [r.score for r in res[planted:]])
        if m != "jvp":
            exact = scores["jvp"]
            for name, part in (("planted", slice(0, planted)), ("heldout", slice(planted, None))):
                values = [v for r in res[part] for v in r.values]
                entry[name] = rel_errors(values, [v for r in exact[part] for v in r.values])
        out[m] = entry
    return out


def roc_numbers(pos: Sequence[float], neg: Sequence[float], fpr_max: float = 0.01) -> dict[str, float]:
    """AUC, and the largest TPR whose FPR does not exceed fpr_max (SPEC.md §3)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    scores = np.r_[pos, neg]
    fpr, tpr, _ = roc_curve(y, scores)
    return {"auc": float(roc_auc_score(y, scores)), "tpr_at_1pct_fpr": float(tpr[fpr <= fpr_max].max())}


# -- measuring -----------------------------------------------------------------------------------------
class Memory:
    """Peak memory of one measurement: CUDA allocator peak, or sampled resident set size on CPU."""

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.kind = "cuda_max_memory_allocated" if self.cuda else "rss_sampled_2ms"
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not self.cuda:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    @staticmethod
    def rss() -> int:
        try:
            import psutil

            return int(psutil.Process().memory_info().rss)
        except ImportError:  # Linux without psutil
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self.rss())
            time.sleep(0.002)

    def current(self) -> int:
        return int(self.torch.cuda.memory_allocated()) if self.cuda else self.rss()

    def begin(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        else:
            self._peak = self.rss()

    def end(self) -> int:
        if self.cuda:
            self.torch.cuda.synchronize()
            return int(self.torch.cuda.max_memory_allocated())
        return max(self._peak, self.rss())

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def process_peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def timed(fn: Callable[[], Any], mem: Memory) -> tuple[float, int, Any]:
    """Seconds, peak memory and result of one call, with the device synchronised on both sides."""
    mem.begin()
    start = time.perf_counter()
    out = fn()
    peak = mem.end()  # synchronises CUDA before the clock is read
    return time.perf_counter() - start, peak, out


def floor_fn(ckpt: Any, prompts: Sequence[str], n: int) -> Callable[[], None]:
    """Two bare batched UNet forwards (cond+uncond, at x and at a probe point) on precomputed inputs."""
    import torch

    from memtest.detection.metrics import DEFAULT_FD_H
    from memtest.detection.scoring import Scorer, ScoreSettings

    helper = Scorer(ckpt, ScoreSettings(n=n, batch_size=len(prompts)))
    t = helper.timesteps[0]
    x = helper.noise(list(range(n))).repeat(len(prompts), 1, 1, 1)
    tok = ckpt.tokenizer
    with torch.inference_mode():
        ids = tok([*prompts, ""], padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(ckpt.device)  # fmt: skip
        emb = ckpt.text_encoder(ids)[0]
        e_c = emb[:-1].repeat_interleave(n, dim=0)
        e_0 = emb[-1:].expand_as(e_c)
        states = torch.cat([e_c, e_0]).contiguous()
        u = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(x.device)
        u = u / u.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        at_x = torch.cat([x, x]).to(ckpt.dtype)
        probe = (at_x + DEFAULT_FD_H * math.sqrt(x[0].numel()) * torch.cat([u, u])).to(ckpt.dtype)
    unet = ckpt.unet

    def run() -> None:
        with torch.inference_mode():
            unet(at_x, t, encoder_hidden_states=states, return_dict=False)
            unet(probe, t, encoder_hidden_states=states, return_dict=False)

    return run


def settings_for(method: str, n: int, batch: int) -> Any:
    from memtest.detection.scoring import ScoreSettings

    if method == "score_norm" or method in DETECTORS:
        return ScoreSettings(metric=method, n=n, batch_size=batch)
    return ScoreSettings(metric="sharpness", method=method, n=n, batch_size=batch)


def rel_errors(values: Sequence[float], exact: Sequence[float]) -> dict[str, float]:
    errs = [abs(a - b) / abs(b) for a, b in zip(values, exact, strict=True) if b != 0]
    return {"max_rel_err_vs_jvp": max(errs), "median_rel_err_vs_jvp": statistics.median(errs)}


def measure_config(
    ckpt: Any, prompts: Sequence[str], n: int, methods: Sequence[str], reps: int, mem: Memory, first_call: bool
) -> dict[str, Any]:
    from memtest.detection.scoring import Scorer
    from memtest.errors import ScoringError

    P = len(prompts)
    refused: dict[str, str] = {}
    for m in list(methods):
        try:
            Scorer(ckpt, settings_for(m, n, P))
        except ScoringError as exc:  # a detector that does not apply here (tiled_l2 at n = 1, attention on SDXL)
            refused[m] = str(exc)
    methods = [m for m in methods if m not in refused]
    floor = floor_fn(ckpt, prompts, n)
    scorers = {m: Scorer(ckpt, settings_for(m, n, P)) for m in methods}
    embed_s, _, _ = timed(lambda: Scorer(ckpt, settings_for("fd", n, P)).embed([*prompts, ""]), mem)
    out: dict[str, Any] = {"prompts": P, "n": n, "unet_rows_per_forward": 2 * P * n, "embed_s": embed_s}
    results: dict[str, dict[str, Any]] = {m: {"evaluations": EVALUATIONS.get(m)} for m in methods}
    values: dict[str, list[float]] = {}
    if first_call:  # warm-up: the floor once, and each method's first call on a fresh Scorer (encodes prompts)
        out["floor_first_s"] = timed(floor, mem)[0]
        for m in methods:
            secs, peak, res = timed(lambda m=m: scorers[m].score(prompts), mem)
            results[m].update(first_call_s=secs, first_call_per_prompt_s=secs / P, first_call_peak_memory_bytes=peak)
            values[m] = [v for r in res for v in r.values]
    else:  # no warm-up calls (at SD scale one costs minutes); embeddings still cached before timing
        for m in methods:
            scorers[m].embed([*prompts, ""])
    times: dict[str, list[float]] = {k: [] for k in ("floor", *methods)}
    peaks: dict[str, int] = dict.fromkeys(times, 0)
    ratios: dict[str, list[float]] = {m: [] for m in methods}
    calls: dict[str, Callable[[], Any]] = {"floor": floor}
    calls.update({m: (lambda m=m: scorers[m].score(prompts)) for m in methods})
    for r in range(reps):
        order = ["floor", *methods]
        if r % 2:
            order.reverse()
        round_times: dict[str, float] = {}
        for key in order:
            secs, peak, res = timed(calls[key], mem)
            if key != "floor":
                values[key] = [v for r in res for v in r.values]
            round_times[key] = secs
            times[key].append(secs)
            peaks[key] = max(peaks[key], peak)
        for m in methods:
            ratios[m].append(round_times[m] / round_times["floor"])
    floor_med = statistics.median(times["floor"])
    out["floor"] = {
        "evaluations": EVALUATIONS["floor"],
        "median_s": floor_med,
        "per_prompt_s": floor_med / P,
        "times_s": times["floor"],
        "peak_memory_bytes": peaks["floor"],
    }
    for m in methods:
        med = statistics.median(times[m])
        results[m].update(
            median_s=med,
            per_prompt_s=med / P,
            times_s=times[m],
            ratio=statistics.median(ratios[m]),
            ratio_of_medians=med / floor_med,
            round_ratios=ratios[m],
            peak_memory_bytes=peaks[m],
        )
        if first_call:
            results[m]["first_call_ratio"] = results[m]["first_call_s"] / floor_med
    out["methods"] = results
    if refused:
        out["not_applicable"] = refused
    if "jvp" in values:
        out["accuracy"] = {m: rel_errors(values[m], values["jvp"]) for m in ("fd", "fd-forward") if m in values}
    return out


# -- reporting -----------------------------------------------------------------------------------------
def memtest_source() -> dict[str, Any]:
    """Which memtest was measured: its folder and, in a git checkout, the commit and whether it was edited."""
    import subprocess

    import memtest

    root = Path(memtest.__file__).resolve().parent.parent
    info: dict[str, Any] = {"path": str(root)}
    try:
        git = ["git", "-C", str(root)]
        info["commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "memtest"], capture_output=True, text=True).stdout
        info["memtest_modified"] = bool(dirty.strip())
    except OSError:
        pass
    return info


def machine_info(device: Any) -> dict[str, Any]:
    import diffusers
    import torch
    import transformers

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "memtest": memtest_source(),
        "load_average_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_bytes"] = int(torch.cuda.get_device_properties(device).total_memory)
    return info


def model_info(ckpt: Any) -> dict[str, Any]:
    unet, te = ckpt.unet, ckpt.text_encoder
    return {
        "name": ckpt.name,
        "unet_parameters": int(sum(p.numel() for p in unet.parameters())),
        "text_encoder_parameters": int(sum(p.numel() for p in te.parameters())),
        "latent_shape": list(ckpt.latent_shape),
        "block_out_channels": list(unet.config.block_out_channels),
        "cross_attention_dim": int(unet.config.cross_attention_dim),
        "max_length": int(ckpt.tokenizer.model_max_length),
        "dtype": str(ckpt.dtype).replace("torch.", ""),
    }


def gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def print_table(report: dict[str, Any]) -> None:
    m = report["model"]
    print(f"\n{m['name']}: UNet {m['unet_parameters'] / 1e6:.2f}M parameters, latents {m['latent_shape']}, "
          f"{m['dtype']} on {report['machine']['device']}, {report['machine']['torch_threads']} threads")  # fmt: skip
    if "process_first_call_s" in report:
        print(f"first Scorer.score call in the process: {report['process_first_call_s']:.3f} s")
    head = f"{'P':>3} {'n':>2} {'method':<17} {'s/prompt':>10} {'ratio':>6} {'first':>7} {'peak GiB':>8} {'err/jvp':>8}"
    print(head)
    print("-" * len(head))
    for c in report["configs"]:
        f = c["floor"]
        print(f"{c['prompts']:>3} {c['n']:>2} {'floor':<17} {f['per_prompt_s']:>10.4f} {1.0:>6.2f} {'':>7} "
              f"{gib(f['peak_memory_bytes']):>8}")  # fmt: skip
        for name, r in c["methods"].items():
            acc = c.get("accuracy", {}).get(name)
            err = f"{acc['max_rel_err_vs_jvp']:.1e}" if acc else ""
            first = f"{r['first_call_ratio']:.2f}" if "first_call_ratio" in r else ""
            print(f"{'':>3} {'':>2} {name:<17} {r['per_prompt_s']:>10.4f} {r['ratio']:>6.2f} {first:>7} "
                  f"{gib(r['peak_memory_bytes']):>8} {err:>8}")  # fmt: skip
    print(f"process peak RSS: {gib(report['memory']['process_peak_rss_bytes'])} GiB")
    acc = report.get("canary_accuracy")
    if acc:
        print(f"\ncanary: {acc['planted']} planted vs {acc['heldout']} held-out captions, n={acc['n']}")
        for m in ("jvp", "fd", "fd-forward"):
            errs = "".join(
                f"  {g} max err {acc[m][g]['max_rel_err_vs_jvp']:.1e}" for g in ("planted", "heldout") if g in acc[m]
            )
            print(f"{m:<11} AUC {acc[m]['auc']:.3f}  TPR@1% {acc[m]['tpr_at_1pct_fpr']:.3f}{errs}")


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def method_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in (*METHODS, *DETECTORS)]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"unknown method(s) {bad}; choose from {', '.join((*METHODS, *DETECTORS))}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=("tiny", "canary", "sd"), default="tiny",
                   help="tiny: the canaries' architecture, random weights; canary: zoo:finetuned; "
                        "sd: Stable Diffusion v1's UNet and text encoder, random weights")  # fmt: skip
    p.add_argument("--checkpoint", default="zoo:finetuned",
                   help="with --model canary: the checkpoint (a zoo name or a diffusers folder)")  # fmt: skip
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--prompts", type=int_list, default=None,
                   help="prompts per batch to measure (default 1,4,16; sd: 2)")  # fmt: skip
    p.add_argument("--n", type=int_list, default=None, help="generations per prompt (default 1,4; sd: 4)")
    p.add_argument("--methods", type=method_list, default=list(METHODS), help="default: " + ",".join(METHODS))
    p.add_argument("--reps", type=int, default=None, help="timed rounds per configuration (default 5; sd: 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--channels-last", action="store_true", help="UNet weights in channels-last memory format")
    p.add_argument(
        "--no-first-call",
        action="store_true",
        help="no warm-up: do not time the first calls (default with --model sd, where one costs minutes)",
    )
    p.add_argument("--first-call", action="store_true", default=None, help="time the first calls even with sd")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1-2 prompts, 2 rounds: a smoke test")
    p.add_argument("--json", type=Path, default=None, help="write the full results here")
    args = p.parse_args(argv)
    if args.quick and args.model != "tiny":
        p.error("--quick measures a tiny model; use it with --model tiny")
    sd = args.model == "sd"
    args.prompts = args.prompts or ([1, 2] if args.quick else [2] if sd else [1, 4, 16])
    args.n = args.n or ([1, 2] if args.quick else [4] if sd else [1, 4])
    args.reps = args.reps or (2 if args.quick else 1 if sd else 5)
    args.no_first_call = args.no_first_call or (sd and args.first_call is None)
    if args.reps < 1:
        p.error("--reps must be at least 1")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from memtest.detection.scoring import Scorer
    from memtest.models.checkpoint import parse_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = parse_dtype(args.dtype)
    report: dict[str, Any] = {"schema": SCHEMA, "command": [Path(sys.argv[0]).name, *sys.argv[1:]]}
    report["machine"] = machine_info(device)
    build_s = time.perf_counter()
    ckpt = build_model(args.model, device, dtype, args.quick, args.checkpoint)
    report["build_s"] = time.perf_counter() - build_s
    if args.channels_last:  # for the floor and memtest alike: the model is shared
        ckpt.unet.to(memory_format=torch.channels_last)
    report["model"] = model_info(ckpt)
    report["settings"] = {
        "prompts": args.prompts, "n": args.n, "methods": args.methods, "reps": args.reps, "quick": args.quick,
        "first_call": not args.no_first_call, "channels_last": args.channels_last,
    }  # fmt: skip
    mem = Memory(device)
    try:
        baseline = mem.current()
        if not args.no_first_call:
            first = min(args.prompts)
            secs, _, _ = timed(
                lambda: Scorer(ckpt, settings_for(args.methods[0], min(args.n), first)).score(PROMPTS[:first]), mem
            )
            report["process_first_call_s"] = secs
            report["process_first_call_method"] = args.methods[0]
        configs = []
        for P in args.prompts:
            for n in args.n:
                prompts = [PROMPTS[i] if i < len(PROMPTS) else f"{PROMPTS[i % len(PROMPTS)]} {i}" for i in range(P)]
                configs.append(measure_config(ckpt, prompts, n, args.methods, args.reps, mem, not args.no_first_call))
                print(f"measured P={P} n={n}", file=sys.stderr, flush=True)
        report["configs"] = configs
        if args.model == "canary":
            accuracy = canary_accuracy(ckpt, n=4, heldout=40, batch=8)
            if accuracy is not None:
                report["canary_accuracy"] = accuracy
    finally:
        mem.close()
    report["memory"] = {
        "kind": mem.kind,
        "baseline_bytes": baseline,
        "process_peak_rss_bytes": process_peak_rss(),
    }
    report["machine"]["load_average_end"] = list(os.getloadavg())
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.path.append(str(Path(__file__).resolve().parent.parent))  # a checkout without `pip install -e .`
    sys.exit(main())
