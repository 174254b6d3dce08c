"""Stratified train/validation/test splits, drawn once and saved with the run.

The split is drawn per class (each class is shuffled and cut at the given fractions), so every
split keeps the class proportions; a manifest's ``split`` column, when present, is used as is.
The split file stores paths relative to the dataset root, so a run can be resumed or evaluated
later on exactly the same images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnnlens.data.folders import SPLITS, ImageSet, Sample, scan_dataset
from cnnlens.errors import InputError
from cnnlens.outputs import write_json
from cnnlens.validation import read_json

DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def check_fractions(fractions: tuple[float, float, float]) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise InputError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    if fractions[0] <= 0 or fractions[1] <= 0:
        raise InputError(f"the train and validation fractions must be positive, got {fractions}")


def stratified_split(
    labels: list[int], fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = 0
) -> dict[str, list[int]]:
    """Split sample indices per class at ``fractions`` (train, val, test).

    Each class of ``n`` images gives ``round(n * f_val)`` images to validation and ``round(n * f_test)``
    to test, at least one each when the class has three images or more and the fraction is positive;
    the rest train.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.
    """
    check_fractions(fractions)
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    for _, idx in sorted(by_class.items()):
        perm = [idx[j] for j in rng.permutation(len(idx))]
        n_val, n_test = (_share(len(idx), f) for f in fractions[1:])
        out["val"] += perm[:n_val]
        out["test"] += perm[n_val : n_val + n_test]
        out["train"] += perm[n_val + n_test :]
    return {k: sorted(v) for k, v in out.items()}


def _share(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 3:
        return 0
    return max(1, round(n * fraction))


def split_dataset(
    dataset: ImageSet, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = 0
) -> dict[str, list[Sample]]:
    """The samples of each split: the manifest's ``split`` column if every row has one, else stratified.

    Raises:
        ValueError: Only some manifest rows have a split, or the train or validation split is empty.
    """
    given = [s.split for s in dataset.samples]
    if all(g is not None for g in given):
        parts = {k: [s for s in dataset.samples if s.split == k] for k in SPLITS}
    elif any(g is not None for g in given):
        raise InputError(
            "only some manifest rows have a split; give every row one, or leave the column empty"
        )
    else:
        idx = stratified_split(dataset.labels, fractions, seed)
        parts = {k: [dataset.samples[i] for i in v] for k, v in idx.items()}
    for k in ("train", "val"):
        if not parts[k]:
            raise InputError(
                f"the {k} split is empty; the dataset is too small ({len(dataset.samples)} images)"
            )
    return parts


def save_split(parts: dict[str, list[Sample]], dataset: ImageSet, path: str | os.PathLike[str]) -> Path:
    """Write the split as JSON: each split's relative paths."""
    body = {k: [dataset.relative(s.path) for s in v] for k, v in parts.items()}
    return write_json(path, body)


def load_split(dataset: ImageSet, path: str | os.PathLike[str]) -> dict[str, list[Sample]]:
    """Read a split written by :func:`save_split` back onto ``dataset``'s samples.

    Raises:
        ValueError: The split names an image the dataset no longer has.
    """
    body = read_json(path, "split file written by cnnlens train (split.json)")
    if not isinstance(body, dict) or not all(
        isinstance(body.get(k, []), list) and all(isinstance(p, str) for p in body.get(k, [])) for k in SPLITS
    ):
        raise InputError(
            f"{path}: not a split written by cnnlens train (expected lists of image paths under "
            f"{', '.join(SPLITS)}); train a new run"
        )
    by_path = {dataset.relative(s.path): s for s in dataset.samples}
    missing = [p for k in SPLITS for p in body.get(k, []) if p not in by_path]
    if missing:
        raise InputError(
            f"{path}: {len(missing)} image(s) of the saved split are not in the dataset any more "
            f"(e.g. {missing[0]}); train a new run instead of resuming"
        )
    return {k: [by_path[p] for p in body.get(k, [])] for k in SPLITS}


def run_split(run: str | os.PathLike[str], split: str, *, strict: bool = False) -> tuple[list[Sample], str]:
    """The samples of one split of a training run folder (its ``config.json`` names the data and
    masks, its ``split.json`` the files of each split), and a description of where they came from.

    Raises:
        ValueError: ``run`` is not a run folder, or the split is empty.
    """
    folder = Path(run)
    if not (folder / "config.json").is_file() or not (folder / "split.json").is_file():
        raise InputError(f"{run} is not a training run folder; give the data to evaluate on as well")
    config = read_json(folder / "config.json", "training configuration written by cnnlens train")
    if not isinstance(config, dict) or "data" not in config:
        raise InputError(
            f"{folder / 'config.json'}: not a training configuration (it names no data); "
            "give the data to evaluate on as well"
        )
    dataset = scan_dataset(config["data"], masks=config.get("masks"), strict=strict)
    samples = load_split(dataset, folder / "split.json")[split]
    if not samples:
        raise InputError(f"the {split} split of {run} is empty; evaluate on --split val or give DATA")
    return samples, f"{config['data']} ({split} split)"
