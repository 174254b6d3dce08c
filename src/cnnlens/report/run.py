"""``cnnlens report``: one page for a trained run or any cnnlens output folder.

The page is ``OUT.html`` and its images lie beside it in ``OUT_files/`` (JPEG thumbnails and the
PNG figures, loaded lazily), so that a run with 1,000 test images gives a page of a few hundred kB
instead of tens of MB of base64; the two together need no network. What goes on the page is what
the folder holds (see :func:`build_report`).
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from PIL import Image

from cnnlens.attribution.core.base import Attribution
from cnnlens.attribution.core.explanation import Explanation
from cnnlens.data.images import load_image
from cnnlens.errors import CnnlensError, InputError
from cnnlens.evaluation.classification import METRICS, Evaluation
from cnnlens.outputs import write_bytes, write_text
from cnnlens.report.html import color_bar
from cnnlens.report.sections import read_sections

log = logging.getLogger(__name__)

#: The page's files lie in ``<page stem>_files/`` beside it; this file marks the folder as ours.
FILES_SUFFIX = "_files"
MARKER = ".cnnlens-report"
#: The ``generator`` meta tag of every page: a page with it may be replaced by a new report.
GENERATOR = "cnnlens report"

Progress = Callable[[str], None]


@dataclass
class Block:
    """One section of the page."""

    key: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    figures: list[dict[str, str]] = field(default_factory=list)
    html: Markup = field(default_factory=Markup)
    open: bool = True


class Assets:
    """Writes the page's images into its files folder and returns their paths relative to the page."""

    def __init__(self, folder: Path, relative: str) -> None:
        self.folder = folder
        self.relative = relative
        self.count = 0

    def _name(self, stem: str, suffix: str) -> str:
        self.count += 1
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:60]
        return f"{self.count:05d}-{safe}{suffix}"

    def image(self, image: Image.Image, stem: str, max_side: int = 200) -> str:
        """``image`` as a JPEG thumbnail of at most ``max_side`` pixels."""
        im = image.convert("RGB")
        im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        name = self._name(stem, ".jpg")
        im.save(self.folder / name, format="JPEG", quality=85)
        return f"{self.relative}/{name}"

    def copy(self, path: Path, stem: str) -> str:
        """A figure file copied as it is."""
        name = self._name(stem, path.suffix.lower())
        shutil.copyfile(path, self.folder / name)
        return f"{self.relative}/{name}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.info("skipping %s: %s", path, err)
        return None


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> dict[str, Any]:
    return {"columns": list(columns), "rows": [[_cell(c) for c in r] for r in rows], "caption": caption}


def is_run(folder: Path) -> bool:
    """Whether ``folder`` is a training run with a checkpoint."""
    return (folder / "config.json").is_file() and any((folder / n).is_file() for n in ("best.pt", "last.pt"))


# ---------------------------------------------------------------------------------------------- run


def model_card(folder: Path, evaluation: Evaluation | None) -> Block:
    """Architecture, weights, head, frozen layers, data, split sizes and training time of a run."""
    config = _read_json(folder / "config.json") or {}
    data = _read_json(folder / "data.json") or {}
    history = _read_json(folder / "history.json") or []
    seconds = sum(float(h.get("seconds", 0.0)) for h in history if isinstance(h, dict))
    weights = config.get("weights") or ("pretrained" if config.get("pretrained") else "random initialisation")
    rows: list[list[Any]] = [
        ["architecture", config.get("model")],
        ["weights", weights],
        ["head", config.get("head")],
        ["frozen layers (policy)", config.get("freeze")],
        ["data", config.get("data")],
        ["classes", ", ".join(data.get("class_names", []))],
        ["split sizes", ", ".join(f"{k} {v}" for k, v in (data.get("split_sizes") or {}).items())],
        ["image size", config.get("image_size")],
        ["epochs run", f"{len(history)} of {config.get('epochs')}"],
        ["training time", f"{seconds:.1f} s"],
        ["optimiser", f"AdamW lr {config.get('lr')}, weight decay {config.get('weight_decay')}"],
        ["batch size, augmentation", f"{config.get('batch_size')}, {config.get('augment')}"],
    ]
    if config.get("head") in ("spn",) or config.get("masks"):
        rows.append(
            ["saliency-aware", f"mask ratio {config.get('mask_ratio')}, loss {config.get('loc_loss')}"]
        )
    if evaluation is not None:
        module = evaluation.model.module
        total = sum(p.numel() for p in module.parameters())
        rows.append(["parameters", f"{total:,}"])
    return Block("model", "Model card", tables=[table(["", "value"], rows)])


def curves_block(folder: Path, assets: Assets) -> Block | None:
    history = _read_json(folder / "history.json")
    if not history and not (folder / "curves.png").is_file():
        return None
    block = Block("curves", "Training curves")
    if (folder / "curves.png").is_file():
        block.figures.append(
            {"src": assets.copy(folder / "curves.png", "curves"), "caption": "loss and accuracy"}
        )
    if isinstance(history, list) and history:
        keys = [k for k in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")]
        block.tables.append(table(keys, [[h.get(k) for k in keys] for h in history], "per epoch"))
    return block


def confusable_pairs(confusion: np.ndarray, names: Sequence[str], top: int = 10) -> list[list[Any]]:
    """The most confused (true, predicted) pairs: count, share of the true class, and the reverse count."""
    c = np.asarray(confusion)
    support = c.sum(1)
    off = [(int(c[i, j]), i, j) for i in range(len(c)) for j in range(len(c)) if i != j and c[i, j] > 0]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [
        [names[i], names[j], n, n / support[i] if support[i] else float("nan"), int(c[j, i])]
        for n, i, j in off[:top]
    ]


def confusion_html(confusion: np.ndarray, names: Sequence[str]) -> Markup:
    """The confusion matrix as a table, each cell shaded by its share of the true class."""
    c = np.asarray(confusion)
    support = np.maximum(c.sum(1, keepdims=True), 1)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = []
    for i, name in enumerate(names):
        cells = "".join(
            f'<td style="background: rgba(40,90,200,{c[i, j] / support[i, 0]:.2f})">{c[i, j]}</td>'
            for j in range(len(names))
        )
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    return Markup(
        '<table class="confusion"><tr><th>true \\ predicted</th>'
        + head
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )


def metrics_blocks(evaluation: Evaluation) -> list[Block]:
    m = evaluation.metrics
    names = m.class_names
    rows = [
        [name, int(m.support[i]), *(float(m.per_class[k][i]) for k in METRICS)]
        for i, name in enumerate(names)
    ]
    rows.append(["macro", m.total, *(float(m.macro[k]) for k in METRICS)])
    metrics = Block(
        "metrics",
        "Accuracy and per-class metrics",
        paragraphs=[f"{evaluation.source}: accuracy {m.accuracy:.4f} on {m.total} images."],
        tables=[table(["class", "support", *METRICS], rows)],
    )
    confusion = Block(
        "confusion",
        "Confusion matrix",
        paragraphs=["Rows: true class; columns: predicted class; shading: share of the true class."],
        html=confusion_html(m.confusion, names),
        tables=[
            table(
                ["true", "predicted as", "count", "share of true", "reverse count"],
                confusable_pairs(m.confusion, names),
                "the most confusable class pairs",
            )
        ],
    )
    return [metrics, confusion]


@dataclass
class Example:
    index: int
    correct: bool
    image: Image.Image
    explanations: dict[str, Explanation] = field(default_factory=dict)


def pick_examples(evaluation: Evaluation, per_class: int) -> dict[int, list[tuple[int, bool]]]:
    """Per true class: up to ``per_class`` correct images (most confident first), then up to
    ``per_class`` wrong ones (most confidently wrong first)."""
    pred, labels, probs = evaluation.predictions, evaluation.labels, evaluation.probabilities
    chosen: dict[int, list[tuple[int, bool]]] = {}
    for c in range(len(evaluation.metrics.class_names)):
        mine = np.flatnonzero(labels == c)
        conf = probs[mine, pred[mine]]
        order = mine[np.argsort(-conf, kind="stable")]
        right = [int(i) for i in order if pred[i] == c][:per_class]
        wrong = [int(i) for i in order if pred[i] != c][:per_class]
        chosen[c] = [(i, True) for i in right] + [(i, False) for i in wrong]
    return chosen


def examples_block(
    evaluation: Evaluation,
    methods: Sequence[Attribution],
    assets: Assets,
    *,
    per_class: int,
    progress: Progress | None,
) -> Block:
    """Per class, correct and wrong test images, each with the maps of ``methods`` for the
    predicted class, each map on the colour scale of its values (with its colour bar)."""
    model = evaluation.model
    names = evaluation.metrics.class_names
    chosen = pick_examples(evaluation, per_class)
    examples: dict[int, list[Example]] = {}
    errors: list[str] = []
    for c, items in chosen.items():
        examples[c] = []
        for i, correct in items:
            try:
                image = load_image(evaluation.samples[i].path)
            except CnnlensError as err:
                errors.append(str(err))
                continue
            examples[c].append(Example(i, correct, image))
        if not examples[c] or not methods:
            continue
        x = torch.cat([model.prepare(e.image) for e in examples[c]])
        targets = torch.as_tensor([int(evaluation.predictions[e.index]) for e in examples[c]])
        for method in methods:
            try:
                exp = method.explain(x, targets)
            except (CnnlensError, ValueError, TypeError, RuntimeError) as err:
                errors.append(f"{method.name} on class {names[c]}: {err}")
                exp = None
            for k, e in enumerate(examples[c]):
                if exp is not None:
                    e.explanations[method.name] = exp[k]
                if progress is not None:
                    progress(f"{names[c]}: {method.name}")
    env = _env()
    parts = []
    for c, es in examples.items():
        cards = []
        for ex in es:
            sample = evaluation.samples[ex.index]
            p = int(evaluation.predictions[ex.index])
            overlays = [
                {
                    "method": name,
                    "src": assets.image(
                        e.render(ex.image, preprocessing=model.preprocessing, max_side=256),
                        f"{names[c]}-{name}",
                    ),
                    "bar": color_bar(e.color_scale()),
                }
                for name, e in ex.explanations.items()
            ]
            cards.append(
                {
                    "src": assets.image(model.preprocessing.view(ex.image), f"{names[c]}-image"),
                    "correct": ex.correct,
                    "name": Path(sample.path).name,
                    "predicted": names[p],
                    "probability": float(evaluation.probabilities[ex.index, p]),
                    "overlays": overlays,
                }
            )
        right = sum(1 for ex in es if ex.correct)
        parts.append(
            env.get_template("report_examples.html.j2").render(
                name=names[c], cards=cards, right=right, wrong=len(es) - right, first=c == 0
            )
        )
    text = (
        f"Up to {per_class} correct (most confident) and {per_class} wrong (most confidently wrong) test "
        f"images per class, each with {', '.join(m.name for m in methods) or 'no methods'} for the predicted "
        "class. Each map's colour scale is chosen by its values (sequential over their range when all of "
        "one sign, diverging around zero otherwise) and stated by the colour bar under it."
    )
    return Block(
        "examples",
        "Correct and wrong test images, explained",
        paragraphs=[text, *(f"error: {e}" for e in errors)],
        html=Markup("".join(parts)),
    )


def errors_block(evaluation: Evaluation, limit: int = 200) -> Block | None:
    """All misclassified test images as a table (the first ``limit``), most confidently wrong first."""
    worst = evaluation.worst_errors(limit)
    if not worst:
        return None
    names = evaluation.metrics.class_names
    rows = [
        [
            str(evaluation.samples[i].path),
            names[int(evaluation.labels[i])],
            names[int(evaluation.predictions[i])],
            float(evaluation.probabilities[i, evaluation.predictions[i]]),
        ]
        for i in worst
    ]
    wrong = int((evaluation.predictions != evaluation.labels).sum())
    return Block(
        "errors",
        f"Misclassified test images ({wrong})",
        tables=[
            table(["path", "true", "predicted", "confidence"], rows, f"the first {len(rows)} of {wrong}")
        ],
        open=False,
    )


# ------------------------------------------------------------------------------- other folders


def eval_blocks(folder: Path, assets: Assets) -> list[Block]:
    """An ``evaluate`` output folder (``metrics.json``, ``confusion.png``, ``misclassified.png``)."""
    metrics = _read_json(folder / "metrics.json")
    if not isinstance(metrics, dict) or "per_class" not in metrics:
        return []
    rows = [[r.get("class"), r.get("support"), *(r.get(k) for k in METRICS)] for r in metrics["per_class"]]
    rows.append(["macro", metrics.get("n"), *(metrics.get("macro", {}).get(k) for k in METRICS)])
    accuracy = float(metrics.get("accuracy", float("nan")))
    block = Block(
        f"eval-{folder.name}",
        f"Evaluation: {folder.name}",
        paragraphs=[f"{metrics.get('data')}: accuracy {accuracy:.4f} on {metrics.get('n')} images."],
        tables=[table(["class", "support", *METRICS], rows)],
    )
    confusion = metrics.get("confusion", {})
    if confusion.get("rows_true_columns_predicted"):
        c = np.asarray(confusion["rows_true_columns_predicted"])
        block.html = confusion_html(c, confusion["class_names"])
        block.tables.append(
            table(
                ["true", "predicted as", "count", "share of true", "reverse count"],
                confusable_pairs(c, confusion["class_names"]),
                "the most confusable class pairs",
            )
        )
    for name in ("misclassified.png",):
        if (folder / name).is_file():
            block.figures.append({"src": assets.copy(folder / name, name), "caption": name})
    return [block]


def summary_blocks(folder: Path, assets: Assets) -> list[Block]:
    """An ``explain``/``demo`` output (``summary.json`` and the overlays beside it)."""
    summary = _read_json(folder / "summary.json")
    if not isinstance(summary, dict) or "images" not in summary:
        return []
    model = summary.get("model", {})
    cards = []
    for im in summary["images"]:
        preds = ", ".join(
            f"{p['class_name']} {100 * p['probability']:.1f}%" for p in im.get("predictions", [])[:3]
        )
        overlays = []
        for e in im.get("explanations", []):
            png = folder / e.get("png", "")
            if png.is_file() and png.resolve().is_relative_to(folder.resolve()):
                overlays.append(
                    {
                        "method": e["method"],
                        "src": assets.image(Image.open(png), e["method"]),
                        "seconds": e.get("seconds"),
                    }
                )
        cards.append({"stem": im.get("stem"), "predictions": preds, "overlays": overlays})
    body = _env().get_template("report_summary.html.j2").render(cards=cards)
    return [
        Block(
            f"explain-{folder.name}",
            f"Explanations: {folder.name}",
            paragraphs=[
                f"Model {model.get('name')} ({model.get('arch')}); the overlays as the command drew them."
            ],
            html=Markup(body),
        )
    ]


def benchmark_blocks(folder: Path) -> list[Block]:
    """A ``benchmark`` output (``benchmark.json``): the method x metric table."""
    summary = _read_json(folder / "benchmark.json")
    if not isinstance(summary, dict) or "table" not in summary or "metrics" not in summary:
        return []
    from cnnlens.report.benchmark import best_rows, format_cell

    best = best_rows(summary)
    metrics = summary["metrics"]
    columns = ["method"] + [
        f"{m['name']} ({'higher' if m.get('higher_is_better') else 'lower'} is better)" for m in metrics
    ]
    rows = []
    for row in summary["table"]:
        cells = [row["row"]]
        for m in metrics:
            cell = row["metrics"].get(m["name"], {})
            text = format_cell(float(cell.get("mean", float("nan"))), float(cell.get("ci95", float("nan"))))
            cells.append(f"{text} *" if row["row"] in best.get(m["name"], set()) else text)
        rows.append(cells)
    return [
        Block(
            f"benchmark-{folder.name}",
            f"Benchmark: {folder.name}",
            paragraphs=["Mean ± 95% interval over images; * marks the best method per metric."],
            tables=[table(columns, rows)],
        )
    ]


def probe_blocks(folder: Path, assets: Assets) -> list[Block]:
    """``layers`` (``atlas.json`` + ``atlas.png``) and ``channels`` (``channels.json`` + ``.png``)."""
    blocks = []
    atlas = _read_json(folder / "atlas.json") if (folder / "atlas.json").is_file() else None
    if isinstance(atlas, dict):
        block = Block(
            f"atlas-{folder.name}",
            f"Layer atlas: {folder.name}",
            paragraphs=[f"image {atlas.get('image')}, model {atlas.get('model')}"],
        )
        if (folder / "atlas.png").is_file():
            block.figures.append(
                {"src": assets.copy(folder / "atlas.png", "atlas"), "caption": "the map at every layer"}
            )
        blocks.append(block)
    channels = _read_json(folder / "channels.json") if (folder / "channels.json").is_file() else None
    if isinstance(channels, dict):
        block = Block(f"channels-{folder.name}", f"Channel ranking: {folder.name}")
        ranked = channels.get("channels") or []
        if ranked and isinstance(ranked[0], dict):
            keys = list(ranked[0])[:6]
            block.tables.append(
                table(keys, [[r.get(k) for k in keys] for r in ranked[:20]], "the first 20 channels")
            )
        if (folder / "channels.png").is_file():
            block.figures.append(
                {"src": assets.copy(folder / "channels.png", "channels"), "caption": "top channels"}
            )
        blocks.append(block)
    return blocks


def experiment_blocks(folder: Path, assets: Assets) -> list[Block]:
    """A saliency-aware ``experiment`` output (``results.md`` tables and ``figure.png``)."""
    md = folder / "results.md"
    if not md.is_file() or not (folder / "results.json").is_file():
        return []
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md.read_text(encoding="utf-8"))
    block = Block(
        f"experiment-{folder.name}", f"Baseline vs saliency-aware: {folder.name}", html=Markup(body)
    )
    if (folder / "figure.png").is_file():
        block.figures.append(
            {"src": assets.copy(folder / "figure.png", "figure"), "caption": "image, mask, SPN map, Grad-CAM"}
        )
    block.html = (
        Markup(str(block.html).replace('src="figure.png"', f'src="{block.figures[0]["src"]}"'))
        if block.figures
        else block.html
    )
    return [block]


def section_blocks(folder: Path, assets: Assets) -> list[Block]:
    """The sections that ``probe`` and ``hypothesis`` tools leave (``*/section.json``)."""
    blocks = []
    for s in read_sections(folder):
        figures = [
            {
                "src": assets.copy(folder / s.key / f.path, f"{s.key}-{Path(f.path).stem}"),
                "caption": f.caption,
            }
            for f in s.figures
            if (folder / s.key / f.path).is_file()
        ]
        paragraphs = ([f"verdict: {s.verdict}"] if s.verdict else []) + [
            p.strip() for p in s.text.split("\n\n") if p.strip()
        ]
        blocks.append(
            Block(
                f"section-{s.key}",
                s.title,
                paragraphs=paragraphs,
                figures=figures,
                tables=[table(t.columns, t.rows, t.caption) for t in s.tables],
                html=Markup(s.html),
            )
        )
    return blocks


# ---------------------------------------------------------------------------------------- page


def _env() -> Environment:
    return Environment(
        loader=PackageLoader("cnnlens.report", "templates"), autoescape=select_autoescape(["html", "j2"])
    )


def files_folder(out: Path) -> Path:
    return out.with_name(out.stem + FILES_SUFFIX)


def check_report_out(out: str | os.PathLike[str]) -> Path:
    """``out`` checked before any work: an ``.html`` path whose page and files folder are absent or
    an earlier report's (never anything else's)."""
    path = Path(out)
    if path.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--out {path}: give an .html file name, e.g. report.html")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise InputError(f"--out {path} exists and is not a regular file")
    if path.is_file() and GENERATOR not in path.read_text(encoding="utf-8", errors="replace")[:2000]:
        raise InputError(f"--out {path} exists and was not written by cnnlens report; choose another name")
    files = files_folder(path)
    if files.is_symlink() or (files.exists() and not (files / MARKER).is_file()):
        raise InputError(f"{files} exists and is not a cnnlens report's files folder; choose another --out")
    return path


def collect(
    folder: Path,
    assets: Assets,
    *,
    evaluation: Evaluation | None,
    methods: Sequence[Attribution],
    per_class: int,
    progress: Progress | None,
) -> list[Block]:
    """The page's sections for what ``folder`` and its sub-folders hold."""
    blocks: list[Block] = []
    if is_run(folder):
        blocks.append(model_card(folder, evaluation))
        curves = curves_block(folder, assets)
        if curves is not None:
            blocks.append(curves)
    if evaluation is not None:
        blocks += metrics_blocks(evaluation)
        blocks.append(examples_block(evaluation, methods, assets, per_class=per_class, progress=progress))
        errors = errors_block(evaluation)
        if errors is not None:
            blocks.append(errors)
    folders = [folder, *sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())]
    for sub in folders:
        if evaluation is not None and sub.name == "eval-test":
            continue  # evaluated afresh above, with the images
        blocks += eval_blocks(sub, assets) if sub != folder else []
        blocks += summary_blocks(sub, assets)
        blocks += benchmark_blocks(sub)
        blocks += probe_blocks(sub, assets)
        blocks += experiment_blocks(sub, assets)
    blocks += section_blocks(folder, assets)
    return blocks


def build_report(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    evaluation: Evaluation | None = None,
    methods: Sequence[Attribution] = (),
    per_class: int = 2,
    title: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write the page ``out`` (and its images into ``<out stem>_files/``) for ``folder``.

    Shown when present: for a training run the model card and training curves; with
    ``evaluation`` (the run's test split, see :func:`~cnnlens.evaluation.evaluate`) accuracy, the
    per-class precision / sensitivity / specificity / F1 table, the confusion matrix and the most
    confusable pairs, per class correct and wrong test images explained by ``methods`` (built on
    ``evaluation.model``) and the list of misclassified images; from the folder and its direct
    sub-folders: ``evaluate`` outputs, ``explain``/``demo`` overlays (``summary.json``), the
    ``benchmark`` table (``benchmark.json``), the layer atlas (``atlas.json``), the channel ranking
    (``channels.json``), saliency-aware experiment tables (``results.md``) and the sections of
    ``probe`` and ``hypothesis`` tools (``*/section.json``).

    The files folder is written in full beside the page first and then moved into place, so an
    error leaves the previous report as it was.

    Raises:
        InputError: ``folder`` is not a folder, ``out`` is not ours to write, or nothing in the
            folder can be reported.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder: give a training run or a cnnlens output folder")
    page = check_report_out(out)
    files = files_folder(page)
    page.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{files.name}.", dir=page.parent))
    try:
        assets = Assets(tmp, files.name)
        blocks = collect(
            root, assets, evaluation=evaluation, methods=methods, per_class=per_class, progress=progress
        )
        if not blocks:
            raise InputError(
                f"{root} holds nothing to report: expected a training run (config.json) or the output "
                "of a cnnlens command (summary.json, benchmark.json, metrics.json, */section.json...)"
            )
        write_bytes(tmp / MARKER, b"cnnlens report files\n")
        html_text = (
            _env()
            .get_template("report.html.j2")
            .render(
                title=title or f"cnnlens report: {root.resolve().name}",
                generator=GENERATOR,
                blocks=blocks,
                source=str(root),
            )
        )
        if files.exists():
            shutil.rmtree(files)
        tmp.rename(files)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return write_text(page, html_text)
