"""Training sets as suites: read the layouts fine-tuners train from and write a suite whose cases are the set's
distinct captions, each with the images it was trained with and tags for its duplication risk (docs/datasets.md).

- `readers`: Hugging Face imagefolder, kohya sd-scripts (folders and dataset TOML), WebDataset tar shards, Parquet and
  datasets' save_to_disk, each streamed as `Sample`s; paths never leave the dataset root;
- `images`: images read within memtest.evidence.images' limits, hashed, and stored beside the suite when they have no
  file of their own (``SUITE.images/<sha256>.<ext>``);
- `risk`: perceptual-hash near-duplicate clusters (bucketed union-find) and per-caption risk;
- `build`: `suite_from_dataset`, the one entry point (`memtest suite from-dataset` on the command line).

Built on memtest.audit.suites (to write suites), memtest.evidence.images (its limits) and memtest.errors; never imports
torch or pytest. pyarrow (Parquet) and imagehash come with memtest's ``data`` extra.
"""

from __future__ import annotations

from memtest.datasets.build import Cluster, DatasetSuite, case_id, suite_from_dataset
from memtest.datasets.errors import DatasetError
from memtest.datasets.images import ImageStore
from memtest.datasets.readers import FORMATS, Format, ReadOptions, Sample, detect_format, iter_samples
from memtest.datasets.risk import DEFAULT_DISTANCE, CaptionRisk, near_duplicate_labels

__all__ = [
    "DEFAULT_DISTANCE",
    "FORMATS",
    "CaptionRisk",
    "Cluster",
    "DatasetError",
    "DatasetSuite",
    "Format",
    "ImageStore",
    "ReadOptions",
    "Sample",
    "case_id",
    "detect_format",
    "iter_samples",
    "near_duplicate_labels",
    "suite_from_dataset",
]
