"""The bad-input matrix (issue 16): every command, given what a hostile but fair user would give it.

Each case is one row of :data:`CASES`: the command line (``{name}`` is a file or folder of the
fixture :func:`env`, ``{out}`` the case's output folder), the exit status it must end with and the
words its one error line must hold (the input's name and the problem). Every case also checks:

* no traceback on stderr, and for exit status 2 exactly one line, ``error: ...``;
* nothing left behind: an exit-2 run leaves ``{out}`` as it was (a folder holding only the user's
  ``mine.txt``, unchanged) or, for the commands that want a new folder (``train``, ``data``,
  ``experiment``; ``new_out=True``), not created at all;
* nothing existing overwritten: the fixture's files (the inputs, the run folder) are unchanged.

Cases that a command handles legitimately (a 1x1, 16-bit, CMYK image, an animated GIF, a JPEG named
``.png``, a non-UTF-8 file name) end with exit status 0 and say so in their id (``ok-``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shlex
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlens.cli import main
from cnnlens.models import load_model
from cnnlens.models.checkpoint import checkpoint_dict, save_checkpoint
from cnnlens.outputs import write_json

NON_UTF8 = os.fsdecode(b"caf\xe9.png")  # a name that is not UTF-8 (surrogate-escaped by Python)


class Payload:
    """A pickle that would create ``marker`` while being loaded, if anything loaded it unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in a few bytes (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def build_env(root: Path) -> dict[str, Path]:
    """Every input of the matrix, good and bad, under ``root``."""
    rng = np.random.default_rng(0)
    p: dict[str, Path] = {}

    def path(name: str, rel: str) -> Path:
        p[name] = root / rel
        p[name].parent.mkdir(parents=True, exist_ok=True)
        return p[name]

    noise = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path("ok", "img/ok.png"))
    good_png = p["ok"].read_bytes()
    path("empty", "img/empty.png").write_bytes(b"")
    path("trunc", "img/trunc.png").write_bytes(good_png[: len(good_png) // 2])
    path("text_jpg", "img/notes.jpg").write_text("these are my notes, not a photo\n")
    Image.fromarray(noise).save(path("jpeg_png", "img/really_a_jpeg.png"), format="JPEG")
    path("dir_png", "img/folder.png").mkdir()
    path("bomb", "img/bomb.png").write_bytes(png_header_only(60_000, 60_000))
    Image.new("RGB", (1, 1), (200, 10, 10)).save(path("one_px", "img/one.png"))
    Image.fromarray((rng.integers(0, 65535, (32, 32))).astype(np.uint16)).save(path("i16", "img/deep.png"))
    Image.new("CMYK", (32, 32), (0, 200, 100, 20)).save(path("cmyk", "img/cmyk.jpg"))
    frames = [Image.new("P", (32, 32), i * 40) for i in range(3)]
    frames[0].save(path("gif", "img/anim.gif"), save_all=True, append_images=frames[1:], duration=50)
    path("svg", "img/vector.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><rect width="32" height="32"/></svg>'
    )
    path("loop", "img/loop.png").symlink_to("loop.png")
    path("dangling", "img/dangling.png").symlink_to("gone.png")
    path("locked", "img/locked.png").write_bytes(good_png)
    p["locked"].chmod(0)
    path("non_utf8", f"img/{NON_UTF8}").write_bytes(good_png)
    path("non_utf8_bad", "img/" + os.fsdecode(b"bad\xff.png")).write_bytes(b"junk")
    Image.fromarray(noise[:, :, 0]).save(path("gray_mask", "img/mask.png"))

    model = load_model("tinycnn", pretrained=False)
    save_checkpoint(model, path("ckpt", "models/tiny.pt"))
    path("junk_pt", "models/junk.pt").write_bytes(b"\x80\x02not a pickle at all" * 10)
    path("empty_pt", "models/empty.pt").write_bytes(b"")
    path("trunc_pt", "models/trunc.pt").write_bytes(p["ckpt"].read_bytes()[:300])
    with path("evil", "models/evil.pt").open("wb") as f:
        pickle.dump({"state_dict": Payload(root / "pwned")}, f, protocol=2)
    p["pwned"] = root / "pwned"
    state = model.module.state_dict()
    torch.save(
        {k: torch.zeros(*(s + 1 for s in v.shape)) if v.ndim else v for k, v in state.items()},
        path("bad_shapes", "models/bad_shapes.pt"),
    )
    torch.save([1, 2, 3], path("list_pt", "models/list.pt"))
    noarch = checkpoint_dict(model)
    del noarch["arch"]
    torch.save(noarch, path("noarch", "models/noarch.pt"))

    # a class-folder dataset, a manifest, and their broken variants
    for label in ("cat", "dog"):
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                path(f"{label}{i}", f"data/good/{label}/{label}{i}.png")
            )
    path("empty_dir", "data/empty").mkdir()
    for i in range(2):
        Image.fromarray(noise).save(path(f"solo{i}", f"data/one_class/only/x{i}.png"))
    path("junk_class", "data/junk_classes/a/x.png").write_bytes(b"junk")
    path("junk_class2", "data/junk_classes/b/y.png").write_bytes(b"junk")
    rows = [f"{label}/{label}{i}.png,{label}" for label in ("cat", "dog") for i in range(4)]
    path("manifest", "data/good/manifest.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    path("no_label_col", "data/good/nolabel.csv").write_text("path\ncat/cat0.png\n")
    path("empty_csv", "data/good/empty.csv").write_text("")
    path("missing_rows", "data/good/missing.csv").write_text("path,label\nnope.png,cat\nnada.png,dog\n")
    path("latin1_csv", "data/good/latin1.csv").write_bytes(
        "path,label\ncat/cat0.png,chat\xe9\n".encode("latin-1")
    )
    path("bad_split", "data/good/badsplit.csv").write_text(
        "path,label,split\n" + "\n".join(r + ",sometimes" for r in rows) + "\n"
    )
    path("masks_dir", "data/masks").mkdir()
    Image.new("L", (7, 5), 255).save(path("small_mask", "data/masks/cat0.png"))
    Image.fromarray(noise).save(path("bench_images", "bench/images/cat0.png"))
    path("bench_masks", "bench/masks/cat0.png").write_bytes(b"not a mask")
    p["bench"] = root / "bench"
    path("bench_noimg", "bench_noimg/readme.txt").write_text("no images here\n")
    p["bench_noimg"] = root / "bench_noimg"

    # a training run and its broken copies
    run = root / "run"
    argv = [
        "train",
        str(root / "data/good"),
        "--model",
        "tinycnn",
        "--no-pretrained",
        "--freeze",
        "none",
        "--epochs",
        "1",
        "--image-size",
        "24",
        "--split",
        "0.5,0.25,0.25",
        "--out",
        str(run),
    ]
    assert main(argv) == 0
    p["run"] = run
    for name, damage in (
        ("run_nobest", lambda r: [(r / n).unlink() for n in ("best.pt", "last.pt")]),
        ("run_badconfig", lambda r: (r / "config.json").write_text("{not json")),
        ("run_truncbest", lambda r: (r / "best.pt").write_bytes((r / "best.pt").read_bytes()[:200])),
        ("run_trunclast", lambda r: (r / "last.pt").write_bytes((r / "last.pt").read_bytes()[:200])),
        ("run_badsplit", lambda r: (r / "split.json").write_text('{"test": 3}')),
    ):
        copy = root / name
        copy.mkdir()
        for f in run.iterdir():
            (copy / f.name).write_bytes(f.read_bytes())
        damage(copy)
        p[name] = copy
    p["foreign"] = root / "foreign"
    (p["foreign"] / "src").mkdir(parents=True)
    write_json(p["foreign"] / "config.json", {})
    (p["foreign"] / "src" / "important.py").write_text("x = 1\n")
    p["afile"] = root / "afile.txt"
    p["afile"].write_text("mine\n")
    return p


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_env(tmp_path_factory.mktemp("matrix"))


@dataclass(frozen=True)
class Case:
    """One bad input: ``argv`` (shell words; ``{name}`` from the fixture, ``{out}`` the output
    folder), the exit status, and the words the error line must hold."""

    id: str
    argv: str
    code: int = 2
    says: tuple[str, ...] = ()
    new_out: bool = False  # the command wants a new folder: an error must not create it
    slow: bool = False


EX = "explain --model tinycnn -m saliency -o {out}"
EXG = "explain --model tinycnn -m gradcam -o {out}"
EXO = "explain --model tinycnn -m occlusion -o {out}"
LAY = "layers --model tinycnn -o {out}"
CH = "channels --model tinycnn --samples 2 -o {out}"
BEN = "benchmark --model tinycnn --methods saliency --metrics sparseness --no-references -o {out}"
TINY = " --model tinycnn --no-pretrained"
XDS = "explain-dataset --model tinycnn --no-pretrained -m saliency -o {out}"
SRV = "serve --model tinycnn --no-pretrained"
TR = "train --model tinycnn --no-pretrained --freeze none --epochs 1 --image-size 24 -o {out}"
LS = "experiment layer-study -o {out}"
EV = "evaluate -o {out}"

CASES = [
    # ---- image files (explain) ----
    Case("img-empty", EX + " {empty}", says=("empty.png", "not an image")),
    Case("img-truncated", EX + " {trunc}", says=("trunc.png", "truncated")),
    Case("img-text-named-jpg", EX + " {text_jpg}", says=("notes.jpg", "not an image")),
    Case("img-directory", EX + " {dir_png}", says=("folder.png", "is a directory")),
    Case("img-decompression-bomb", EX + " {bomb}", says=("bomb.png", "decompression bomb", "--max-pixels")),
    Case("img-svg", EX + " {svg}", says=("vector.svg", "not an image")),
    Case("img-symlink-loop", EX + " {loop}", says=("loop.png", "symlink loop")),
    Case("img-dangling-link", EX + " {dangling}", says=("dangling.png", "missing file")),
    Case("img-missing", EX + " {out}/nope.png", says=("nope.png", "no such file")),
    Case("img-unreadable", EX + " {locked}", says=("locked.png", "permission denied")),
    Case("img-non-utf8-name-corrupt", EX + " {non_utf8_bad}", says=("bad", "not an image")),
    Case("img-max-pixels-zero", EX + " --max-pixels 0 {ok}", says=("--max-pixels", "0")),
    Case("ok-img-1x1", EX + " {one_px}", code=0),
    Case("ok-img-16bit", EX + " {i16}", code=0),
    Case("ok-img-cmyk", EX + " {cmyk}", code=0),
    Case("ok-img-animated-gif", EX + " {gif}", code=0),
    Case("ok-img-jpeg-named-png", EX + " {jpeg_png}", code=0),
    Case("ok-img-non-utf8-name", EX + " {non_utf8}", code=0),
    Case("partly-one-good-one-bad", EX + " {ok} {empty}", code=1, says=("empty.png",)),
    # ---- models and checkpoints ----
    Case("model-unknown-name", "explain --model resnet999 -m saliency -o {out} {ok}", says=("resnet999",)),
    Case("model-missing-file", "explain --model {out}/gone.pt -m saliency -o {out} {ok}", says=("gone.pt",)),
    Case("model-corrupt", "explain --model {junk_pt} -m saliency -o {out} {ok}", says=("junk.pt", "safely")),
    Case("model-empty-file", "explain --model {empty_pt} -m saliency -o {out} {ok}", says=("empty.pt",)),
    Case("model-truncated", "explain --model {trunc_pt} -m saliency -o {out} {ok}", says=("trunc.pt",)),
    Case(
        "model-malicious-pickle",
        "explain --model {evil} -m saliency -o {out} {ok}",
        says=("evil.pt", "safely"),
    ),
    Case("model-not-a-dict", "explain --model {list_pt} -m saliency -o {out} {ok}", says=("list.pt",)),
    Case("model-no-arch", "explain --model {noarch} -m saliency -o {out} {ok}", says=("noarch.pt", "arch")),
    Case(
        "model-run-without-best",
        "explain --model {run_nobest} -m saliency -o {out} {ok}",
        says=("run_nobest",),
    ),
    Case("model-folder-not-a-run", "explain --model {empty_dir} -m saliency -o {out} {ok}", says=("empty",)),
    Case("weights-missing", EX + " --weights {out}/w.pt {ok}", says=("w.pt",)),
    Case("weights-other-shapes", EX + " --weights {bad_shapes} {ok}", says=("bad_shapes.pt", "shapes")),
    Case("weights-malicious", EX + " --weights {evil} {ok}", says=("evil.pt", "safely")),
    Case("device-unknown", EX + " --device tpu9 {ok}", says=("tpu9",)),
    Case("models-show-unknown", "models --show resnet999", says=("resnet999",)),
    Case("models-show-corrupt", "models --show {junk_pt}", says=("junk.pt",)),
    # ---- layers ----
    Case("layer-unknown", EXG + " --layer nolayer {ok}", says=("nolayer",)),
    Case("layer-not-conv", EXG + " --layer classifier {ok}", says=("--layer classifier", "feature map")),
    Case("layer-for-method-without", EX + " --layer conv1 {ok}", says=("--layer conv1", "saliency")),
    Case("layers-unknown", LAY + " --layers nolayer {ok}", says=("nolayer",)),
    Case("layers-bad-image", LAY + " {trunc}", says=("trunc.png",)),
    Case("channels-layer-unknown", CH + " --layer nolayer {ok}", says=("nolayer",)),
    Case("channels-bad-image", CH + " {empty}", says=("empty.png",)),
    # ---- targets ----
    Case("target-out-of-range", EX + " -t 999 {ok}", says=("999",)),
    Case("target-negative", EX + " -t -1 {ok}", says=("-1",)),
    Case("target-unknown-name", EX + " -t zebra {ok}", says=("zebra",)),
    Case("target-empty", EX + " -t , {ok}", says=("empty class",)),
    Case("layers-target-out-of-range", LAY + " -t 999 {ok}", says=("999",)),
    Case("channels-target-unknown", CH + " -t zebra {ok}", says=("zebra",)),
    # ---- method parameters ----
    Case("method-unknown", "explain --model tinycnn -m gradcan -o {out} {ok}", says=("gradcan",)),
    Case("param-no-equals", EX + " -p steps {ok}", says=("steps", "KEY=VALUE")),
    Case("param-no-key", EX + " -p =3 {ok}", says=("=3", "KEY=VALUE")),
    Case("param-unused", EX + " -p window=8 {ok}", says=("window",)),
    Case("param-type", EXO + " -p window=big {ok}", says=("window", "big")),
    Case("param-sign", EXO + " -p window=-4 {ok}", says=("window", "-4")),
    Case("param-zero", EXO + " -p stride=0 {ok}", says=("stride", "0")),
    Case("param-float-for-int", EXO + " -p window=2.5 {ok}", says=("window", "2.5")),
    Case("param-huge-window", EXO + " -p window=100000 {ok}", says=("window=100000",)),
    Case(
        "param-huge-steps",
        "explain --model tinycnn -m integrated_gradients -p steps=10000000000 -o {out} {ok}",
        says=("steps=10000000000",),
    ),
    Case(
        "param-nan", "explain --model tinycnn -m smoothgrad -p noise=nan -o {out} {ok}", says=("noise", "nan")
    ),
    Case(
        "param-negative-samples",
        "explain --model tinycnn -m smoothgrad -p n_samples=-2 -o {out} {ok}",
        says=("n_samples", "-2"),
    ),
    Case(
        "param-compiled-unknown",
        "explain --model tinycnn -m deeplift -p compiled=sometimes -o {out} {ok}",
        says=("compiled", "auto, on, off", "sometimes"),
    ),
    Case("top-zero", EX + " --top 0 {ok}", says=("--top", "0")),
    Case("layers-steps-zero", LAY + " --method ig --steps 0 {ok}", says=("steps", "0")),
    Case("layers-batch-negative", LAY + " --batch-size -1 {ok}", says=("batch", "-1")),
    Case("layers-columns-zero", LAY + " --columns 0 {ok}", says=("columns", "0")),
    Case(
        "channels-samples-zero", "channels --model tinycnn --samples 0 -o {out} {ok}", says=("samples", "0")
    ),
    Case(
        "channels-stderr-negative",
        "channels --model tinycnn --stderr -1 -o {out} {ok}",
        says=("stderr", "-1"),
    ),
    Case("channels-patch-mass", CH + " --patch-mass 2 {ok}", says=("patch-mass", "2")),
    Case("channels-top-zero", CH + " --top 0 {ok}", says=("top", "0")),
    Case(
        "bench-metric-unknown", BEN.replace("sparseness", "accuracy") + " --data {bench}", says=("accuracy",)
    ),
    Case(
        "bench-metric-param-zero",
        BEN.replace("sparseness", "deletion") + " --metric-param steps=0 --data {bench}",
        says=("steps", "0"),
    ),
    Case("train-epochs-zero", TR + " --epochs 0 {good}", says=("epochs", "0"), new_out=True),
    Case("train-lr-negative", TR + " --lr -1 {good}", says=("lr", "-1"), new_out=True),
    Case("train-batch-zero", TR + " --batch-size 0 {good}", says=("batch", "0"), new_out=True),
    Case("train-split-sum", TR + " --split 0.5,0.5,0.5 {good}", says=("split",), new_out=True),
    Case("train-split-text", TR + " --split most {good}", says=("split", "most"), new_out=True),
    Case("train-image-size-zero", TR + " --image-size 0 {good}", says=("image", "0"), new_out=True),
    Case("train-freeze-unknown", TR + " --freeze sometimes {good}", says=("sometimes",), new_out=True),
    Case(
        "train-mask-ratio", TR + " --saliency-aware --mask-ratio 2 {good}", says=("mask", "2"), new_out=True
    ),
    Case("synth-classes-zero", "data synth --classes 0 -o {out}", says=("classes", "0"), new_out=True),
    Case("synth-size-zero", "data synth --size 0 -o {out}", says=("size", "0"), new_out=True),
    Case("synth-spurious", "data synth --spurious 2 -o {out}", says=("spurious", "2"), new_out=True),
    Case(
        "experiment-ratios",
        "experiment saliency-aware {good} --ratios a,b -o {out}",
        says=("--ratios",),
        new_out=True,
    ),
    Case(
        "experiment-data-missing",
        "experiment saliency-aware {out}/nodata -o {out}",
        says=("nodata",),
        new_out=True,
    ),
    Case(
        "experiment-backbone",
        "experiment saliency-aware {manifest} --backbones resnet999 -o {out}",
        says=("resnet999",),
        new_out=True,
    ),
    # experiment layer-study: every case ends before a run is trained
    Case("ls-data-missing", LS + " {out}/nodata", says=("nodata",), new_out=True),
    Case("ls-method-not-layer", LS + " --method saliency {good}", says=("saliency",), new_out=True),
    Case("ls-backbone-unknown", LS + " --backbone resnet999 {good}", says=("resnet999",), new_out=True),
    Case(
        "ls-layer-unknown",
        LS + " --backbone tinycnn --layers nolayer {good}",
        says=("nolayer",),
        new_out=True,
    ),
    Case("ls-param-bad", LS + " -p n_samples=0 {good}", says=("n_samples", "0"), new_out=True),
    Case("ls-split-no-test", LS + " --split 0.8,0.2,0 {good}", says=("split",), new_out=True),
    Case("ls-split-text", LS + " --split most {good}", says=("split", "most"), new_out=True),
    Case("ls-confidence", LS + " --confidence 2 {good}", says=("confidence", "2"), new_out=True),
    Case("ls-target", LS + " --target zebra {good}", says=("target", "zebra"), new_out=True),
    Case("ls-batch-zero", LS + " --batch-size 0 {good}", says=("batch", "0"), new_out=True),
    Case("ls-resamples-zero", LS + " --resamples 0 {good}", says=("resamples", "0"), new_out=True),
    Case("ls-lr-negative", LS + " --lr -1 {good}", says=("lr", "-1"), new_out=True),
    Case("ls-model-not-a-run", LS + " --model {good} {good}", says=("training run",), new_out=True),
    Case("ls-run-other-data", LS + " --model {run} {manifest}", says=("trained on",), new_out=True),
    Case("ls-run-bad-config", LS + " --model {run_badconfig} {good}", says=("config.json",), new_out=True),
    Case("ls-run-bad-split", LS + " --model {run_badsplit} {good}", says=("split.json",), new_out=True),
    Case("demo-sample-unknown", "demo --samples zebra -o {out}", says=("zebra",)),
    # ---- data folders and manifests ----
    Case("data-missing", TR + " {out}/nodata", says=("nodata",), new_out=True),
    Case("data-empty-folder", TR + " {empty_dir}", says=("empty",), new_out=True),
    Case("data-one-class", TR + " {one_class}", says=("one_class", "class"), new_out=True),
    Case("data-only-junk", TR + " {junk_classes}", says=("junk_classes",), new_out=True),
    Case("data-a-file", TR + " {ok}", says=("ok.png",), new_out=True),
    Case("manifest-no-label", TR + " {no_label_col}", says=("nolabel.csv", "label"), new_out=True),
    Case("manifest-empty", TR + " {empty_csv}", says=("empty.csv",), new_out=True),
    Case("manifest-missing-files", TR + " {missing_rows}", says=("missing.csv",), new_out=True),
    Case("manifest-non-utf8", TR + " {latin1_csv}", says=("latin1.csv", "UTF-8"), new_out=True),
    Case("manifest-bad-split", TR + " {bad_split}", says=("badsplit.csv", "sometimes"), new_out=True),
    Case("evaluate-other-classes", EV + " {run} {one_class}", says=("only",)),
    Case("bench-data-missing", BEN + " --data {out}/nodata", says=("nodata",)),
    Case("bench-data-no-images", BEN + " --data {bench_noimg}", says=("bench_noimg",)),
    Case("bench-split-without-manifest", BEN + " --data {bench} --split test", says=("manifest",)),
    Case("channels-mean-from-missing", CH + " {ok} --baseline mean --mean-from {out}/none", says=("none",)),
    Case("channels-probes-empty", CH + " {ok} --probes {empty_dir}", says=("empty",)),
    Case("layers-baseline-corrupt", LAY + " {ok} --method gradshap --baselines {trunc}", says=("trunc.png",)),
    # ---- masks ----
    Case("masks-missing-folder", TR + " --masks {out}/nomasks {good}", says=("nomasks",), new_out=True),
    Case("saliency-without-masks", TR + " --saliency-aware {good}", says=("mask",), new_out=True),
    Case(
        "ok-bench-corrupt-mask-dropped",
        BEN.replace("sparseness", "pointing_game") + " --data {bench}",
        code=0,
        says=("warning: ", "cat0.png", "without a mask"),
    ),
    # ---- run folders ----
    Case("evaluate-missing-run", EV + " {out}/norun", says=("norun",)),
    Case("evaluate-run-without-best", EV + " {run_nobest}", says=("run_nobest",)),
    Case("evaluate-bad-config", EV + " {run_badconfig}", says=("config.json",)),
    Case("evaluate-truncated-best", EV + " {run_truncbest}", says=("best.pt",)),
    Case("evaluate-bad-split-json", EV + " {run_badsplit}", says=("split.json",)),
    Case("resume-truncated-last", "train --resume {run_trunclast}", says=("last.pt",)),
    Case("resume-missing-run", "train --resume {out}/norun", says=("norun",)),
    Case("train-into-existing-run", TR + " --out {run} {good}", says=("already exists",)),
    Case("train-force-foreign", TR + " --out {foreign} --force {good}", says=("foreign",)),
    Case("out-is-a-file", EX + " --out {afile} {ok}", says=("afile.txt", "is a file")),
    Case("layers-out-is-a-file", LAY + " --out {afile} {ok}", says=("afile.txt", "is a file")),
    Case("bench-out-is-a-file", BEN + " --data {bench} --out {afile}", says=("afile.txt", "is a file")),
    # hypothesis experiments
    Case("hyp-empty-image", "hypothesis parts" + TINY + " -o {out} {empty}", says=("empty.png",)),
    Case("hyp-grid-zero", "hypothesis parts" + TINY + " -o {out} --grid 0 {ok}", says=("grid", "0")),
    Case(
        "hyp-mask-wrong-size",
        "hypothesis shape" + TINY + " -o {out} --mask {small_mask} {ok}",
        says=("mask",),
    ),
    Case(
        "hyp-mask-missing",
        "hypothesis shape" + TINY + " -o {out} --mask {out}/nomask.png {ok}",
        says=("nomask.png",),
    ),
    Case("hyp-shuffle-n-zero", "hypothesis shuffle" + TINY + " -o {out} --n 0 {ok}", says=("n", "0")),
    Case(
        "hyp-texture-unreadable",
        "hypothesis texture" + TINY + " -o {out} --mask {gray_mask} --texture {empty} {ok}",
        says=("empty.png",),
    ),
    Case(
        "hyp-shape-bias-n-zero",
        "hypothesis shape-bias --model tinycnn --no-pretrained --n 0 -o {out}",
        says=("0",),
    ),
    # explain-dataset
    Case("xds-missing-data", XDS + " {out}/nodata", says=("nodata",)),
    Case("xds-empty-folder", XDS + " {empty_dir}", says=("empty",)),
    Case("xds-method-unknown", "explain-dataset" + TINY + " -m nomethod -o {out} {good}", says=("nomethod",)),
    Case("xds-batch-size-zero", XDS + " --batch-size 0 {good}", says=("batch", "0")),
    Case("xds-target-unknown", XDS + " --target zebra {good}", says=("zebra",)),
    Case("xds-over-a-foreign-folder", XDS.replace("{out}", "{foreign}") + " {good}", says=("foreign",)),
    # the run report and the explorer
    Case("report-missing-folder", "report {out}/norun -o {out}/r.html", says=("norun",)),
    Case("report-bad-config", "report {run_badconfig} -o {out}/r.html", says=("config.json",)),
    Case("report-over-a-foreign-file", "report {run} -o {afile}", says=("afile.txt",)),
    Case("serve-missing-data", SRV + " --data {out}/nodata", says=("nodata",)),
    Case("serve-bad-port", SRV + " --port 70000", says=("port", "70000")),
    Case("serve-bad-limit", SRV + " --max-pixels 0", says=("max-pixels", "0")),
    Case("serve-second-model-junk", SRV + " --model {junk_pt}", says=("model B", "junk.pt")),
    Case("serve-second-model-missing", SRV + " --model {out}/norun", says=("model B", "norun")),
    Case("serve-three-models", SRV + " --model tinycnn --model tinycnn", says=("--model", "3 times")),
    Case("serve-weights-two-models", SRV + " --model {ckpt} --weights {ckpt}", says=("--weights",)),
    # probing units
    Case(
        "probe-deconv-layer-unknown",
        "probe deconv" + TINY + " --layer nolayer --unit 0 -o {out} {ok}",
        says=("nolayer",),
    ),
    Case(
        "probe-deconv-bad-image",
        "probe deconv" + TINY + " --layer features.0 --unit 0 -o {out} {trunc}",
        says=("trunc.png",),
    ),
    Case(
        "probe-visualize-unit-range",
        "probe visualize" + TINY + " --layer features.0 --unit 9999 -o {out}",
        says=("9999",),
    ),
    Case(
        "probe-visualize-steps-zero",
        "probe visualize" + TINY + " --layer features.0 --unit 0 --steps 0 -o {out}",
        says=("steps", "0"),
    ),
    Case(
        "probe-dissect-no-data",
        "probe dissect" + TINY + " {empty_dir} --layer features.0 --concepts {masks_dir} -o {out}",
        says=("empty",),
    ),
    Case(
        "probe-dissect-quantile",
        "probe dissect" + TINY + " {good} --layer features.0 --concepts {masks_dir} --quantile 2 -o {out}",
        says=("quantile", "2"),
    ),
]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (links not followed) with a digest of its content."""
    state: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                state[str(path)] = "-> " + os.readlink(path)
            elif path.is_file() and os.access(path, os.R_OK):
                state[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
            else:
                state[str(path)] = "dir" if path.is_dir() else "?"
    return state


def run_case(case: Case, env: dict[str, Path], out: Path) -> tuple[int, str]:
    names = {k: str(v) for k, v in env.items()} | {"out": str(out)}
    for folder in ("good", "one_class", "junk_classes"):
        names[folder] = str(env["cat0"].parents[2] / folder)
    argv = [word.format(**names) for word in shlex.split(case.argv)]
    try:
        return main(argv), ""
    except SystemExit as exit_:  # argparse's own usage errors
        return int(exit_.code or 0), "argparse"


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES]
)
def test_bad_input(
    case: Case, env: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if case.id == "img-unreadable" and os.access(env["locked"], os.R_OK):
        pytest.skip("running as root (or with CAP_DAC_OVERRIDE): chmod 000 does not stop reads")
    out = tmp_path / "out"
    if not case.new_out:
        out.mkdir()
        (out / "mine.txt").write_text("mine\n")
    before = snapshot(env["ok"].parents[1])
    code, how = run_case(case, env, out)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == case.code, err
    lines = [line for line in err.splitlines() if line.strip()]
    if case.code == 2:  # one error line; the files a data scan skipped may precede it as warnings
        assert how != "argparse", "a usage error instead of a checked value: " + err
        assert [line.startswith("error: ") for line in lines].count(True) == 1, err
        assert all(line.startswith(("error: ", "warning: skipped ")) for line in lines), err
    assert all(line.startswith(("error: ", "warning: ", "note: ")) for line in lines), err
    if case.says:
        named = [line for line in lines if all(word in line for word in case.says)]
        assert named, f"no line names {case.says}: {err}"
    if case.new_out and case.code == 2:
        assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    elif not case.new_out:
        assert (out / "mine.txt").read_text() == "mine\n"
        if case.code == 2:
            assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert snapshot(env["ok"].parents[1]) == before, "an input or an existing file was changed"
    assert not env["pwned"].exists(), "a pickle's payload was executed"


def test_the_matrix_covers_every_command() -> None:
    from cnnlens.cli import COMMANDS

    covered = {shlex.split(c.argv)[0] for c in CASES}
    assert len(CASES) >= 60
    assert set(COMMANDS) - covered <= {"probe", "methods"}, set(COMMANDS) - covered
