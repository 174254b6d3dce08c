"""Indexing an image dataset: a folder with one subfolder per class, a CSV manifest, or a plain
folder of images (:func:`read_data` resolves what a DATA argument names).

A manifest has a header with the columns ``path`` and ``label``, and optionally ``mask`` (a mask
image, empty where the image has none) and ``split`` (``train``, ``val`` or ``test``, to fix the
split instead of drawing one). Relative paths are relative to the manifest's folder.

Masks can also come from a folder (``masks=DIR``): a mask belongs to the image with the same file
name stem (``cat_001.jpg`` <- ``masks/cat_001.png``). Only some images need one.

A plain folder of images (what ``cnnlens data synth`` writes, or any folder of photos) is read
recursively from ``DIR/images/`` when there is one, else from ``DIR``; its masks are in ``DIR/masks/``.
Its images have no class label (:data:`UNLABELLED`).

Every problem is either fatal (a :class:`ValueError` that says what to fix) or listed: files that
are skipped go to :attr:`ImageSet.skipped` and raise a :class:`~cnnlens.errors.DataWarning`, or a
:class:`~cnnlens.errors.ImageLoadError` when ``strict=True``.
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from cnnlens.data.images import load_image
from cnnlens.errors import DataWarning, ImageLoadError, InputError

log = logging.getLogger(__name__)

#: File suffixes read as images; other files in class folders are skipped (and listed).
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
SPLITS = ("train", "val", "test")
#: The label of an image of a plain folder of images (scikit-learn's mark of an unlabelled sample).
UNLABELLED = -1
#: Largest/smallest class size above which a dataset is reported as imbalanced.
IMBALANCE_RATIO = 3.0


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    Attributes:
        path: The image file.
        label: Index into :attr:`ImageSet.class_names` (:data:`UNLABELLED` for a plain folder of images).
        mask: Its segmentation mask file, if it has one.
        split: The split fixed by a manifest (``None``: drawn by :func:`~cnnlens.data.split.split_dataset`).
    """

    path: Path
    label: int
    mask: Path | None = None
    split: str | None = None


@dataclass
class ImageSet:
    """An indexed dataset: its class names, its readable samples and what was skipped."""

    root: Path
    class_names: list[str]
    samples: list[Sample]
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def counts(self) -> dict[str, int]:
        """Number of images per class name."""
        c = Counter(self.labels)
        return {name: c.get(i, 0) for i, name in enumerate(self.class_names)}

    @property
    def masked(self) -> int:
        """How many samples have a mask."""
        return sum(s.mask is not None for s in self.samples)

    def relative(self, path: Path) -> str:
        """``path`` relative to the dataset root (POSIX form), as stored in split files."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()


def class_weights(counts: list[int]) -> torch.Tensor:
    """Per-class loss weights ``n / (K * n_k)`` (scikit-learn's "balanced" weights).

    Raises:
        ValueError: A class has no samples.
    """
    if not counts or min(counts) < 1:
        raise InputError(f"every class needs at least one training image for class weights, got {counts}")
    n, k = sum(counts), len(counts)
    return torch.tensor([n / (k * c) for c in counts], dtype=torch.float32)


def scan_dataset(
    data: str | os.PathLike[str],
    *,
    masks: str | os.PathLike[str] | None = None,
    strict: bool = False,
    verify: bool = True,
) -> ImageSet:
    """Index a class-folder dataset or a CSV manifest, check it and list what cannot be used.

    Args:
        data: A folder with one subfolder per class, or a ``.csv`` manifest (see the module doc).
        masks: A folder of masks matched to images by file name stem.
        strict: Raise on the first unreadable or non-image file instead of skipping it.
        verify: Decode every image (and mask) once to find corrupt files and mask size mismatches.

    Returns:
        The dataset; skipped files are in ``skipped`` with the reason. A class none of whose images
        can be read is left out (with a warning) and the labels of the others are renumbered.

    Raises:
        ValueError: The data is missing, has fewer than two non-empty classes, a manifest is
            malformed, masks are ambiguous or a mask's size differs from its image's.
        ImageLoadError: Under ``strict``, the first file that cannot be used.
    """
    root = Path(data)
    if not root.exists():
        raise InputError(f"{root}: no such dataset; expected a folder of class subfolders or a CSV manifest")
    dataset = read_data(root, masks=masks)
    if verify:
        dataset = verify_images(dataset)
    for item in dataset.skipped:
        _skip_or_raise(item, strict)
    _check_classes(dataset, root)
    dataset = drop_empty_classes(dataset)
    warn_imbalance(dataset.counts())
    return dataset


def read_data(
    data: str | os.PathLike[str],
    *,
    labelled: bool = True,
    masks: str | os.PathLike[str] | None = None,
    split: str | None = None,
) -> ImageSet:
    """The images (and masks) a DATA argument names, indexed; no image is decoded.

    DATA is a CSV manifest (any file; see the module doc) or a folder. Given ``split``, only the
    manifest rows of that split are kept, and a folder is read as its ``manifest.csv``. Otherwise a
    folder is a class-folder dataset when ``labelled`` (:func:`scan_folder`), else a plain folder of
    images (:func:`scan_images`; a class-folder dataset is one too).

    Args:
        data: The manifest or the folder.
        labelled: Whether a folder must be a class-folder dataset (training, classification metrics).
        masks: A folder of masks matched to the images of a class-folder dataset or a manifest
            without a mask column by file-name stem (a plain folder of images has ``DIR/masks/``).
        split: Keep only the manifest rows of this split (``train``, ``val`` or ``test``).

    Raises:
        FileNotFoundError: ``data`` does not exist.
        ValueError: ``split`` is unknown, or given for a folder without ``manifest.csv``, or no row
            has it; a manifest is malformed or lists no image; a folder has no class subfolders
            (``labelled``) or no image files; masks are ambiguous, or given twice (a mask column and
            ``masks``), or ``masks`` is given for a plain folder of images.
    """
    if split is not None and split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = Path(data)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    if root.is_file() or split is not None:
        dataset = _manifest_rows(root, split)
    elif labelled:
        dataset = scan_folder(root)
        if (root / "synth.json").is_file() and (root / "manifest.csv").is_file():  # `data synth`'s
            classes = ", ".join(dataset.class_names[:4])
            warnings.warn(
                f"{root} has a manifest.csv but was read as class folders ({classes}); give "
                f"{root / 'manifest.csv'} to use the manifest's labels, masks and splits",
                DataWarning,
                stacklevel=2,
            )
    elif masks is not None:
        raise InputError(
            f"{root}: a plain folder of images has its masks in {root / 'masks'}, not in {masks}"
        )
    else:
        return scan_images(root)
    if masks is not None:
        if any(s.mask is not None for s in dataset.samples):
            raise InputError("the manifest has a mask column; do not give a mask folder as well")
        dataset.samples = match_masks(dataset.samples, Path(masks))
    return dataset


def _manifest_rows(root: Path, split: str | None) -> ImageSet:
    """The manifest ``root`` (``root/manifest.csv`` for a folder), only the rows of ``split``."""
    path = root
    if root.is_dir():
        path = root / "manifest.csv"
        if not path.is_file():
            raise InputError(
                f"{root}: --split {split} selects rows of a manifest, but there is no {path}; pass the "
                "manifest (path,label[,mask],split) or leave out --split"
            )
    dataset = read_manifest(path)
    if split is not None:
        kept = [s for s in dataset.samples if s.split == split]
        if not kept:
            present = sorted({s.split for s in dataset.samples if s.split is not None})
            raise InputError(
                f"{path}: no row has split {split!r} (splits present: {', '.join(present) or 'none'})"
            )
        dataset.samples = kept
    if not dataset.samples:
        raise InputError(f"{path}: the manifest lists no image")
    return dataset


def image_files(folder: Path, *, exclude: Path | None = None) -> list[Path]:
    """The image files below ``folder`` (by suffix), sorted; hidden files and those below ``exclude``
    are left out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not p.name.startswith(".")
        and (exclude is None or exclude not in p.parents)
    )


def scan_images(root: Path) -> ImageSet:
    """Index a plain folder of images: every image file below ``root/images/`` (or ``root``), with
    its mask from ``root/masks/`` (when there is one) matched by file-name stem.

    The dataset's root is the image folder; it has no classes and every label is :data:`UNLABELLED`.

    Raises:
        ValueError: No image file, or two masks (or two images that a mask would belong to) share a
            stem.
    """
    image_dir = root / "images" if (root / "images").is_dir() else root
    mask_dir = root / "masks"
    files = image_files(image_dir, exclude=mask_dir)
    if not files:
        raise InputError(
            f"{image_dir}: no image files in this folder or below it ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    found = masks_for(files, mask_dir) if mask_dir.is_dir() else [None] * len(files)
    return ImageSet(image_dir, [], [Sample(p, UNLABELLED, m) for p, m in zip(files, found, strict=True)])


def _skip_or_raise(item: dict[str, str], strict: bool) -> None:
    if strict:
        raise ImageLoadError(f"{item['path']}: {item['reason']} (--strict; remove the file or drop --strict)")
    warnings.warn(f"skipped {item['path']}: {item['reason']}", DataWarning, stacklevel=3)


def readable_files(folder: Path) -> list[Path]:
    """The files below ``folder`` (hidden ones left out), sorted.

    Raises:
        InputError: ``folder`` or a folder below it cannot be read (``Path.rglob`` would skip it
            silently, and a class would lose images or vanish from the dataset).
    """

    def unreadable(err: OSError) -> None:
        reason = "permission denied" if isinstance(err, PermissionError) else err.strerror or str(err)
        raise InputError(
            f"{err.filename}: cannot be read ({reason}); fix its permissions or move it out of the dataset"
        )

    found = [
        Path(top) / name
        for top, _, names in os.walk(folder, onerror=unreadable)
        for name in names
        if not name.startswith(".")
    ]
    return sorted(p for p in found if p.is_file())


def scan_folder(root: Path) -> ImageSet:
    """Index ``root/<class>/**/<image>``; empty class folders are left out with a warning."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise InputError(
            f"{root}: no class subfolders; expected DATA/<class name>/<images> or a CSV manifest"
        )
    names: list[str] = []
    samples: list[Sample] = []
    skipped: list[dict[str, str]] = []
    for folder in class_dirs:
        files = readable_files(folder)
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped += [
            {"path": str(p), "reason": "not an image file (by its suffix)"} for p in files if p not in images
        ]
        if not images:
            warnings.warn(
                f"class folder {folder} has no images; the class is left out", DataWarning, stacklevel=3
            )
            continue
        samples += [Sample(p, len(names)) for p in images]
        names.append(folder.name)
    return ImageSet(root, names, samples, skipped)


def read_manifest(path: Path) -> ImageSet:
    """Index a CSV manifest with the columns ``path,label[,mask][,split]``."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = set(reader.fieldnames or [])
            if not {"path", "label"} <= columns:
                raise InputError(
                    f"{path}: a manifest needs the header columns path,label[,mask][,split]; "
                    f"found {sorted(columns) or 'no header'}"
                )
            rows = list(reader)
    except UnicodeDecodeError as err:
        raise InputError(
            f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
            "save the manifest as UTF-8 CSV"
        ) from None
    except csv.Error as err:
        raise InputError(f"{path}: not a readable CSV manifest ({err})") from None
    base = path.parent
    labels = sorted({(r.get("label") or "").strip() for r in rows})
    if "" in labels:
        line = 2 + next(i for i, r in enumerate(rows) if not (r.get("label") or "").strip())
        raise InputError(f"{path}, line {line}: empty label; every row needs a class label")
    index = {name: i for i, name in enumerate(labels)}
    samples = [_manifest_sample(r, base, index, f"{path}, line {i + 2}") for i, r in enumerate(rows)]
    return ImageSet(base, labels, samples)


def _manifest_sample(row: dict[str, str], base: Path, index: dict[str, int], where: str) -> Sample:
    def resolve(text: str) -> Path:
        p = Path(text.strip())
        return p if p.is_absolute() else base / p

    if not (row.get("path") or "").strip():
        raise InputError(f"{where}: empty path")
    split = (row.get("split") or "").strip() or None
    if split is not None and split not in SPLITS:
        raise InputError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    mask = (row.get("mask") or "").strip()
    return Sample(resolve(row["path"]), index[row["label"].strip()], resolve(mask) if mask else None, split)


def mask_files(folder: Path) -> dict[str, Path]:
    """The image files below ``folder`` by file-name stem (masks are matched to images by name).

    Raises:
        ValueError: Two masks share a stem.
    """
    found: dict[str, Path] = {}
    for p in image_files(folder):
        if p.stem in found:
            raise InputError(f"masks {found[p.stem]} and {p} have the same name; masks are matched by name")
        found[p.stem] = p
    return found


def masks_for(images: list[Path], folder: Path) -> list[Path | None]:
    """The mask in ``folder`` (matched by file-name stem) of each image, or ``None``.

    Raises:
        ValueError: Two masks share a stem, or two images that a mask would belong to do.
    """
    found = mask_files(folder)
    stems = Counter(p.stem for p in images)
    clashes = [s for s, n in stems.items() if n > 1 and s in found]
    if clashes:
        raise InputError(
            f"several images are called {clashes[0]!r}, so {folder} cannot say which one its mask "
            "belongs to; rename them or use a manifest with a mask column"
        )
    return [found.get(p.stem) for p in images]


def match_masks(samples: list[Sample], folder: Path) -> list[Sample]:
    """Attach the mask of ``folder`` whose file name stem equals each image's stem.

    Raises:
        ValueError: ``folder`` is missing, or two masks (or two images) share a stem.
    """
    if not folder.is_dir():
        raise InputError(f"{folder}: no such mask folder")
    masks = masks_for([s.path for s in samples], folder)
    out = [replace(s, mask=m) for s, m in zip(samples, masks, strict=True)]
    if not any(s.mask for s in out):
        warnings.warn(
            f"no file in {folder} matches an image's name; no image has a mask", DataWarning, stacklevel=3
        )
    return out


def verify_images(dataset: ImageSet) -> ImageSet:
    """Decode each image; unreadable ones move to ``skipped``; check each mask against its image.

    Raises:
        ValueError: A mask is unreadable or its size differs from its image's.
    """
    kept: list[Sample] = []
    for s in dataset.samples:
        try:
            size = load_image(s.path).size
        except ImageLoadError as err:
            dataset.skipped.append({"path": str(s.path), "reason": str(err).removeprefix(f"{s.path}: ")})
            continue
        if s.mask is not None:
            check_mask(s.mask, s.path, size)
        kept.append(s)
    dataset.samples = kept
    return dataset


def check_mask(mask: Path, image: Path, size: tuple[int, int]) -> None:
    """Raise a ValueError naming both files when ``mask`` cannot be read or is not ``size`` (w, h)."""
    try:
        with Image.open(mask) as m:
            msize = m.size
    except (OSError, ValueError) as err:
        raise InputError(f"mask {mask} (of image {image}) cannot be read: {err}") from None
    if msize != size:
        raise InputError(
            f"mask {mask} is {msize[0]}x{msize[1]} but its image {image} is {size[0]}x{size[1]}; "
            "a mask must have its image's size"
        )


def drop_empty_classes(dataset: ImageSet) -> ImageSet:
    """Leave out the classes without samples (with a warning) and renumber the labels.

    A class loses all its samples when none of its images can be read (:func:`verify_images`). The
    remaining classes keep their order; ``class_names`` and every sample's label are renumbered
    together, so ``class_names[sample.label]`` names the same class as before.
    """
    present = set(dataset.labels)
    if len(present) == len(dataset.class_names):
        return dataset
    for i, name in enumerate(dataset.class_names):
        if i not in present:
            warnings.warn(f"class {name} has no readable images; left out", DataWarning, stacklevel=3)
    kept = [i for i in range(len(dataset.class_names)) if i in present]
    new_label = {old: new for new, old in enumerate(kept)}
    dataset.class_names = [dataset.class_names[i] for i in kept]
    dataset.samples = [replace(s, label=new_label[s.label]) for s in dataset.samples]
    return dataset


def _check_classes(dataset: ImageSet, where: Path) -> None:
    present = [n for n, c in dataset.counts().items() if c > 0]
    if len(present) < 2:
        found = ", ".join(f"{n} ({c})" for n, c in dataset.counts().items()) or "none"
        raise InputError(
            f"{where}: a classifier needs at least two classes with readable images; found {found}"
        )


def warn_imbalance(counts: dict[str, int], ratio: float = IMBALANCE_RATIO) -> bool:
    """Warn (and return True) when the largest class is over ``ratio`` times the smallest."""
    sizes = [c for c in counts.values() if c > 0]
    if not sizes or max(sizes) <= ratio * min(sizes):
        return False
    big, small = max(counts, key=counts.__getitem__), min(counts, key=lambda k: counts[k] or 1e9)
    warnings.warn(
        f"imbalanced classes: {big} has {counts[big]} images, {small} has {counts[small]}; "
        "consider --class-weights (weighted loss) and look at per-class metrics, not accuracy alone",
        DataWarning,
        stacklevel=3,
    )
    return True
