"""`memtest zoo ...` (also `python -m memtest.zoo ...`): list, show, train canaries and write their suites."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from memtest.errors import MemtestError, ZooError, neutral_spelling


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="memtest zoo",
        description="Canary checkpoints: tiny text-to-image models with planted memorisation.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("list", help="list the shipped canaries")

    sp = sub.add_parser("path", help="print the folder of a canary (zoo:NAME)")
    sp.add_argument("name")

    sp = sub.add_parser("show", help="summarise a canary's manifest (zoo:NAME or a folder)")
    sp.add_argument("checkpoint")
    sp.add_argument("--json", action="store_true", help="print the manifest as JSON (without images)")

    sp = sub.add_parser(
        "train",
        help="train a canary checkpoint on CPU",
        description=(
            "Train a tiny StableDiffusionPipeline-format canary into OUT. Without --images/--manifest or "
            "--dataset it uses scikit-learn's digits with --planted planted captions. With --dataset it trains on "
            "a training set (imagefolder, kohya, WebDataset or Parquet, as `memtest suite from-dataset` reads it) "
            "and plants the captions named with --plant. With --base it fine-tunes that "
            "checkpoint (tokenizer and VAE frozen); with --base and --lora-rank it trains a LoRA adapter on it "
            "instead and writes only the adapter file and its manifest."
        ),
    )
    sp.add_argument("out", type=Path, help="new folder for the checkpoint")
    sp.add_argument("--images", type=Path, help="folder of your images (with --manifest)")
    sp.add_argument(
        "--manifest",
        type=Path,
        help="CSV or JSON of image,caption[,planted] rows (image relative to --images)",
    )
    sp.add_argument("--heldout", type=Path, help="text file of held-out captions, one per line (calibration)")
    sp.add_argument(
        "--dataset",
        type=Path,
        metavar="PATH",
        help="train on this training set: a folder, a kohya .toml, a .tar shard or a .parquet (instead of --images)",
    )
    sp.add_argument(
        "--plant",
        action="append",
        metavar="CAPTION",
        help="with --dataset: plant this caption of the set (repeatable; it must name exactly one image)",
    )
    sp.add_argument(
        "--format", default="auto", help="--dataset layout: auto, imagefolder, kohya, webdataset or parquet"
    )
    sp.add_argument("--caption-column", help="--dataset caption column or JSON key (default: text, else caption)")
    sp.add_argument("--image-column", help="--dataset Parquet image column (default: image, else the one bytes column)")
    sp.add_argument(
        "--caption-extension", help="--dataset kohya caption files' extension (default: .txt, else .caption)"
    )
    sp.add_argument("--root", type=Path, help="--dataset: the folder no path may leave (default: the dataset's folder)")
    sp.add_argument(
        "--folder-captions", action="store_true", help="--dataset kohya: class tokens caption images without a file"
    )
    sp.add_argument("--planted", type=int, default=10, help="planted captions for the digits data (default 10)")
    sp.add_argument("--base", help="fine-tune this checkpoint (zoo:NAME or a folder) instead of training anew")
    sp.add_argument(
        "--lora-rank",
        type=int,
        metavar="R",
        help="with --base: train a rank-R LoRA on the base's UNet and text-encoder attention instead of fine-tuning it",
    )
    sp.add_argument(
        "--family",
        choices=("sd", "sdxl", "sd3"),
        help="model family of a new canary (default sd; sd3 trains with flow matching; with --base: the base's family)",
    )
    sp.add_argument(
        "--vae-from",
        metavar="CHECKPOINT",
        help="new canary: take this canary's trained tokenizer and VAE, frozen, instead of training a VAE",
    )
    sp.add_argument("--resolution", type=int, default=16, help="image size for --images or --dataset (default 16)")
    sp.add_argument("--seed", type=int, help="random seed (default: the recipe's, 0)")
    sp.add_argument("--steps", type=int, help="UNet + text encoder steps")
    sp.add_argument("--vae-steps", type=int, help="VAE steps (ignored with --base)")
    sp.add_argument("--batch", type=int, help="batch size")
    sp.add_argument("--planted-prob", type=float, help="probability a batch row is planted (default 0.4)")
    sp.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    sp.add_argument("--name", help="canary name in the manifest (default: OUT's folder name)")
    sp.add_argument("--suite", help="suite name in the manifest (default: canary-NAME)")
    sp.add_argument("--quiet", action="store_true", help="no progress on stderr")

    sp = sub.add_parser("suite", help="write the prompt suite (YAML) of a canary from its manifest")
    sp.add_argument("checkpoint", help="zoo:NAME or a canary folder")
    sp.add_argument("-o", "--output", type=Path, help="YAML file to write (default: stdout)")
    sp.add_argument("--name", help="suite name (default: the manifest's)")
    sp.add_argument(
        "--clean-from",
        metavar="CHECKPOINT",
        help="also add that canary's planted captions as clean cases (for a base model: its fine-tune's)",
    )
    sp.add_argument(
        "--mitigate",
        metavar="CAPTION",
        action="append",
        help="give only this planted caption `mitigate: true` (repeatable; default: every planted caption)",
    )
    return p


#: The options of `--dataset` (memtest.datasets' keywords), spelled as flags in messages.
_DATASET_OPTIONS = ("format", "caption_column", "image_column", "caption_extension", "root", "folder_captions")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _spell(name: str, value: str | None) -> str:
    """How `memtest zoo` names an option in a message: the --dataset options as its flags."""
    if name in _DATASET_OPTIONS:
        return _flag(name) if value is None else f"{_flag(name)}={value}"
    return neutral_spelling(name, value)


def _canary_folder(name: str) -> Path:
    """A canary checkpoint or LoRA canary (zoo:NAME, or a folder with a manifest) -> its folder."""
    from memtest.models.canaries import MANIFEST_NAME, canary_folder, is_zoo_name, resolve_zoo

    if is_zoo_name(name):
        return resolve_zoo(name)
    if (Path(name) / MANIFEST_NAME).is_file():
        return Path(name)
    return canary_folder(name)


def _cmd_list() -> int:
    from memtest.defaults import DEFAULT_CHECKPOINT
    from memtest.models.canaries import adapter_names, canaries_dir, load_manifest, zoo_names

    for n in zoo_names() + adapter_names():
        m = load_manifest(canaries_dir() / n)
        mark = "  (default)" if f"zoo:{n}" == DEFAULT_CHECKPOINT else ""
        kind = f" (LoRA adapter on {m.base})" if n in adapter_names() else ""
        print(
            f"zoo:{n}{mark}{kind}: {len(m.planted)} planted, {len(m.clean)} clean, {len(m.heldout)} held-out "
            f"captions; suite {m.suite}; {canaries_dir() / n}"
        )
    return 0


def _cmd_show(checkpoint: str, as_json: bool) -> int:
    from memtest.models.canaries import load_manifest

    m = load_manifest(_canary_folder(checkpoint))
    if as_json:
        doc = m.to_json()
        for p in doc["planted"]:
            p.pop("image_png")
        print(json.dumps(doc, indent=1))
        return 0
    print(f"{checkpoint}: canary '{m.name}' (suite {m.suite}), seed {m.seed}, memtest {m.memtest_version}")
    if m.base and "lora" in m.recipe:
        lora = m.recipe["lora"]
        print(f"  a rank-{lora.get('rank')} LoRA adapter ({lora.get('file')}) on {m.base}")
    elif m.base:
        print(f"  fine-tuned from {m.base}")
    print(f"  trained {m.training_seconds:.0f}s ({', '.join(f'{k} {v:.0f}s' for k, v in m.timings.items())})")
    print(f"  {len(m.planted)} planted captions:")
    for p in m.planted:
        print(f"    {p.caption}")
    print(f"  {len(m.clean)} clean training captions, {len(m.heldout)} held-out captions")
    keys = ("steps", "vae_steps", "batch", "planted_prob", "caption_dropout", "unet_lr", "text_lr")
    print("  recipe: " + ", ".join(f"{k}={m.recipe[k]}" for k in keys if k in m.recipe))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    # Yield the core while another process waits, instead of spinning (the 2-core machines are shared).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from memtest.zoo.data import dataset_data, digits_data, user_data
    from memtest.zoo.train import DEFAULT_RECIPE, FINETUNE_RECIPE, train_canary

    if args.lora_rank is not None and not args.base:
        raise ZooError("--lora-rank trains an adapter on a base checkpoint: add --base (e.g. --base zoo:base)")
    if args.lora_rank is not None and (args.family or args.vae_from):
        raise ZooError("--lora-rank trains on its --base as it is: drop --family and --vae-from")
    if args.lora_rank is not None:
        from memtest.zoo.lora import LORA_RECIPE

        recipe = LORA_RECIPE
    else:
        recipe = FINETUNE_RECIPE if args.base else DEFAULT_RECIPE
    changes = {
        "seed": args.seed,
        "steps": args.steps,
        "vae_steps": args.vae_steps,
        "batch": args.batch,
        "planted_prob": args.planted_prob,
    }
    recipe = recipe.with_(**{k: v for k, v in changes.items() if v is not None})
    if (args.images is None) != (args.manifest is None):
        raise ZooError("--images and --manifest go together: the manifest names files in the image folder")
    if args.dataset is not None and args.images is not None:
        raise ZooError("--dataset and --images/--manifest are two sources of training data: give one")
    if args.plant and args.dataset is None:
        raise ZooError(
            "--plant names planted captions of a --dataset; a manifest marks them in its planted column, and the "
            "digits data takes --planted N"
        )
    given = [f for f in _DATASET_OPTIONS if getattr(args, f) not in (None, False, "auto")]
    if given and args.dataset is None:
        raise ZooError(f"{_flag(given[0])} describes a --dataset: add --dataset PATH")
    heldout: list[str] = []
    if args.heldout is not None:
        try:
            heldout = [ln.strip() for ln in args.heldout.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise ZooError(f"Cannot read held-out captions {args.heldout}: {exc}") from exc
    if args.images is not None:
        data = user_data(args.images, args.manifest, resolution=args.resolution, heldout=heldout)
    elif args.dataset is not None:
        data = dataset_data(
            args.dataset,
            args.plant or (),
            format=args.format,
            caption_column=args.caption_column,
            image_column=args.image_column,
            caption_extension=args.caption_extension,
            root=args.root,
            folder_captions=args.folder_captions,
            resolution=args.resolution,
            heldout=heldout,
        )
    else:
        data = digits_data(recipe.seed, n_planted=args.planted)
        if heldout:
            data.heldout = heldout
    if args.lora_rank is not None:
        from memtest.zoo.lora import LoraShape, train_lora

        m = train_lora(
            args.out,
            data,
            recipe,
            base=args.base,
            lora=LoraShape(rank=args.lora_rank),
            name=args.name,
            suite=args.suite,
            threads=args.threads,
            stream=None if args.quiet else sys.stderr,
        )
    else:
        m = train_canary(
            args.out,
            data,
            recipe,
            base=args.base,
            name=args.name,
            suite=args.suite,
            threads=args.threads,
            stream=None if args.quiet else sys.stderr,
            family=args.family,
            vae_from=args.vae_from,
        )
    print(f"wrote {args.out} ({len(m.planted)} planted captions, {m.training_seconds:.0f}s)")
    return 0


def _cmd_suite(
    checkpoint: str, output: Path | None, name: str | None, clean_from: str | None, mitigate: list[str] | None
) -> int:
    from memtest.models.canaries import load_manifest
    from memtest.zoo.suitegen import suite_text

    m = load_manifest(_canary_folder(checkpoint))
    label = checkpoint if checkpoint.startswith("zoo:") else None
    extra = load_manifest(_canary_folder(clean_from)).planted_captions if clean_from else ()
    text = suite_text(m, name, label, extra_clean=extra, extra_clean_source=clean_from, mitigate=mitigate)
    if output is None:
        print(text, end="")
    else:
        output.write_text(text, encoding="utf-8")
        print(f"wrote {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            return _cmd_list()
        if args.command == "path":
            from memtest.models.canaries import resolve_zoo

            print(resolve_zoo(args.name if args.name.startswith("zoo:") else f"zoo:{args.name}"))
            return 0
        if args.command == "show":
            return _cmd_show(args.checkpoint, args.json)
        if args.command == "train":
            return _cmd_train(args)
        return _cmd_suite(args.checkpoint, args.output, args.name, args.clean_from, args.mitigate)
    except MemtestError as exc:
        print(f"memtest zoo: error: {exc.render(_spell)}", file=sys.stderr)
        return 1
