"""Arguments and helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from cnnlens.attribution.core.base import Attribution
from cnnlens.attribution.core.registry import create, get_method, method_names
from cnnlens.errors import InputError
from cnnlens.models import DEFAULT_MODEL, LoadedModel, load_model
from cnnlens.models.layers import trace_layers
from cnnlens.models.tokens import TokenLayout
from cnnlens.outputs import output_lock
from cnnlens.runtime import tune_allocator
from cnnlens.validation import describe, is_int, is_real


def printable(text: str, encoding: str = "utf-8") -> str:
    """``text`` as ``encoding`` can write it: a file name that is not valid UTF-8 (which Python keeps
    as surrogate escapes, ``caf\udce9.png``) shows its bytes as ``caf\\xe9.png``, and a character
    the encoding lacks shows as a backslash escape."""
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no byte escapes to
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.encode(encoding, "backslashreplace").decode(encoding)


class PrintableStream:
    """``sys.stdout`` or ``sys.stderr``, looked up at each use (so redirection and capture work), that
    writes text the stream cannot encode through :func:`printable` instead of raising
    :class:`UnicodeEncodeError` (which also left rich's buffer holding the text, so every later
    print failed too)."""

    def __init__(self, name: Literal["stdout", "stderr"]) -> None:
        self._name = name

    @property
    def stream(self) -> Any:
        # while a progress bar redirects sys.stdout to its proxy, write where the proxy writes
        stream = getattr(sys, self._name)
        return getattr(stream, "rich_proxied_file", stream)

    def write(self, text: str) -> int:
        try:
            return int(self.stream.write(text))
        except UnicodeEncodeError:
            return int(self.stream.write(printable(text, getattr(self.stream, "encoding", None) or "utf-8")))

    def __getattr__(self, name: str) -> Any:  # isatty, flush, encoding, fileno, ...
        if name == "rich_proxied_file":  # rich would write around this class
            raise AttributeError(name)
        return getattr(self.stream, name)


#: Wide tables stay readable when the output goes to a file or a pipe (rich assumes 80 columns there);
#: a terminal keeps its own width, and ``COLUMNS`` still wins.
console = Console(
    file=PrintableStream("stdout"),  # type: ignore[arg-type]
    width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200,
)
error_console = Console(file=PrintableStream("stderr"), soft_wrap=True)  # type: ignore[arg-type]


class RateColumn(ProgressColumn):
    """Items per second (or seconds per item when slower than one a second)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("-/s", style="progress.data.speed")
        text = f"{speed:.1f}/s" if speed >= 1 else f"{1 / speed:.1f} s/it"
        return Text(text, style="progress.data.speed")


def progress_columns(stats: bool = False) -> list[ProgressColumn]:
    """The columns of every progress bar: description, bar, i/N, [stats,] rate, elapsed, ETA."""
    columns: list[ProgressColumn] = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    if stats:
        columns.insert(3, TextColumn("{task.fields[stats]}"))
    return columns


@contextmanager
def progress_bar(
    description: str, total: int, *, transient: bool = False, fields: bool = False
) -> Iterator[Callable[..., None]]:
    """A progress bar with i/N, rate and ETA on :data:`console`; yields ``advance(what="", n=1,
    **fields)``, which moves the bar on by ``n`` and shows ``what`` as its description.

    With ``fields=True`` the bar also shows ``{task.fields[stats]}`` (pass ``stats=...`` to advance).
    """
    with Progress(*progress_columns(fields), console=console, transient=transient) as bar:
        task = bar.add_task(description, total=total, stats="")

        def advance(what: str = "", n: int = 1, **extra: Any) -> None:
            bar.update(task, advance=n, description=what or description, **extra)

        yield advance


def hold_out(parser: argparse.ArgumentParser) -> None:
    """Make the command of ``parser`` hold its ``--out`` folder for the whole run
    (:func:`~cnnlens.outputs.output_lock`): a second cnnlens run into the same folder is refused with
    one line instead of both writing into it at once."""
    run = parser.get_default("func")

    def locked(args: argparse.Namespace) -> int:
        with output_lock(args.out):
            return int(run(args) or 0)

    parser.set_defaults(func=locked)


def hold_every_out(subparsers: argparse._SubParsersAction) -> None:
    """:func:`hold_out` for every command of a group (``cnnlens probe``, ``cnnlens hypothesis``)."""
    for parser in dict.fromkeys(subparsers.choices.values()):
        hold_out(parser)


def setup_runtime() -> None:
    """Process-wide settings for command-line runs: allocator tuning (:func:`tune_allocator`)."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    tune_allocator()


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    run: Callable[[argparse.Namespace], int] | None = None,
    *,
    help: str,
    description: str | None = None,
    image: Literal["one", "many"] | None = None,
    model: bool = False,
) -> argparse.ArgumentParser:
    """Add the sub-command ``name`` and return its parser, for the command's own arguments.

    Args:
        sub: The sub-parsers of the parent command.
        name: The command's name.
        run: What the command calls with the parsed arguments (``None`` for a group of commands).
        help: One line for the parent's list of commands.
        description: The paragraph of the command's ``--help``.
        image: Add the positional ``IMAGE`` argument: ``"one"`` image file (``args.image``) or
            ``"many"`` (``args.images``, one or more).
        model: Add the arguments that choose the model (:func:`add_model_arguments`), as its first
            options.
    """
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
    if run is not None:
        parser.set_defaults(func=run)
    if image == "one":
        parser.add_argument("image", metavar="IMAGE", help="image file")
    elif image == "many":
        parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    if model:
        add_model_arguments(parser)
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--weights``, ``--no-pretrained`` and ``--device`` (read by :func:`model_from_args`)."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model name (see `cnnlens models`), checkpoint file or run folder (default: {DEFAULT_MODEL})",
    )
    parser.add_argument("--weights", help="local state-dict file to load into the named architecture")
    parser.add_argument(
        "--no-pretrained",
        action="store_true",
        help="random weights instead of downloading pretrained ones",
    )
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")


def model_from_args(args: argparse.Namespace) -> LoadedModel:
    with console.status(f"loading {args.model}"):
        return load_model(
            args.model, weights=args.weights, pretrained=not args.no_pretrained, device=args.device
        )


def split_list(values: list[str] | None) -> list[str]:
    """Flatten repeated and comma-separated option values: ``-m a,b -m c`` -> ``[a, b, c]``."""
    out: list[str] = []
    for v in values or []:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` pairs; values are Python literals when they parse, strings otherwise."""
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--param expects KEY=VALUE, got {pair!r}")
        try:
            value: Any = ast.literal_eval(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):  # {[]: 1}: unhashable
            value = raw
        params[key.strip()] = value
    return params


def build_methods(
    model: LoadedModel,
    names: list[str],
    params: dict[str, Any],
    layer: str | None,
    *,
    quick: bool = False,
    per_method: dict[str, dict[str, Any]] | None = None,
    skip_unsupported: bool = False,
    **settings: str | None,
) -> list[Attribution]:
    """Create each named method with the parameters it accepts; unused parameters are an error.

    ``quick`` starts from each method's :attr:`~Attribution.quick_params`; ``per_method`` sets
    parameters of single methods; ``params`` (the user's ``-p``) overrides both.
    ``skip_unsupported`` leaves out the methods that cannot explain the model (``--method all``).
    ``settings`` are the pass runner's (``precision``, ``memory_format``, ``backend`` from
    ``--precision``, ``--memory-format``, ``--backend``; ``None``: not given): they apply to the
    methods that take them (gradient, guided, CAM, perturbation and surrogate methods); ``-p`` wins.
    """
    classes = [get_method(n) for n in names]
    if skip_unsupported:
        classes = [c for c in classes if c.unsupported(model.module) is None]
    used: set[str] = set()
    methods = []
    for cls in classes:
        accepted = cls.hyperparameters()
        preset = dict(cls.quick_params) if quick else {}
        preset |= (per_method or {}).get(cls.name, {})
        preset |= {k: v for k, v in settings.items() if v is not None and k in accepted}
        given = {k: v for k, v in params.items() if k in accepted}
        used |= set(given)
        check_param_types(cls, given)
        check_pixel_params(cls, given, model)
        kwargs = preset | given
        if layer is not None and cls.uses_layer:
            kwargs["layer"] = layer
        methods.append(create(cls.name, model, **coerce_floats(kwargs, accepted)))
    unused = set(params) - used
    if unused:
        raise InputError(
            f"no selected method takes the parameter(s) {', '.join(sorted(unused))}; "
            "see `cnnlens methods` for each method's parameters"
        )
    if layer is not None and not any(c.uses_layer for c in classes):
        raise InputError(f"--layer {layer} given, but none of {', '.join(names)} uses a layer")
    if layer is not None:
        check_feature_map_layer(model, layer, tokens=True)  # fail early, not once per image
    return methods


def check_param_types(cls: type[Attribution], given: dict[str, Any]) -> None:
    """Refuse a ``-p`` value whose type differs from the type of the parameter's default (a text
    such as ``noise=nan`` or ``steps=ten`` for a number, a number for a flag): the method would
    otherwise fail deep inside with a type error. An integer is accepted for a float."""
    accepted = cls.hyperparameters()
    for key, value in given.items():
        default = accepted[key].default
        if str(accepted[key].annotation) not in ("bool", "int", "float"):  # int | Sequence[int] ...
            if isinstance(value, str) and isinstance(default, (int, float)):
                raise InputError(
                    f"-p {key}={value!r}: {cls.name}'s {key} must be a number (default {default!r}), "
                    f"got {describe(value)}"
                )
            continue
        if isinstance(default, bool):
            ok, expected = isinstance(value, bool), "True or False"
        elif isinstance(default, int):
            ok, expected = is_int(value), "an integer"
        elif isinstance(default, float):
            ok, expected = is_real(value), "a number"
        else:  # no default, None, a text, a tuple: the method checks it
            continue
        if not ok:
            raise InputError(
                f"-p {key}={value!r}: {cls.name}'s {key} must be {expected} (default {default!r}), "
                f"got {describe(value)}"
            )


def check_pixel_params(cls: type[Attribution], given: dict[str, Any], model: LoadedModel) -> None:
    """Refuse a window side given with ``-p`` that is larger than the model's input: the window
    would be cut to the image and hide all of it, giving a constant map."""
    height, width = model.preprocessing.input_size
    for key in set(cls.pixel_params) & set(given):
        value = given[key]
        for side in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(side, int) and side > min(height, width):
                raise InputError(
                    f"-p {key}={given[key]}: larger than the image ({height}x{width} pixels after "
                    f"preprocessing for {model.name}); {key} must be at most {min(height, width)}"
                )


def check_feature_map_layer(model: LoadedModel, layer: str, *, tokens: bool = False) -> None:
    """Raise :class:`InputError` unless ``layer`` exists and outputs an ``(N, C, h, w)`` feature map
    (what every method with a layer needs), found with one dummy forward pass. With ``tokens``, a
    vision transformer's token layer whose patch tokens form a grid is accepted too (the attribution
    methods read it as that grid; the probing tools do not)."""
    name, _ = model.layer(layer)  # an unknown name: the closest names suggested
    pre = model.preprocessing
    shapes = {i.name: i.output_shape for i in trace_layers(model.module, pre.input_size, pre.channels)}
    shape = shapes.get(name)
    if shape is None:
        raise InputError(f"--layer {name}: the layer does not run in the forward pass; choose one that does")
    if tokens and len(shape) == 2 and TokenLayout.of(model.module, pre.input_size).grid_for(shape[0]):
        return  # a vision transformer's tokens, read as their grid of patches
    if len(shape) != 3:
        accepted = " or tokens on a grid of patches" if tokens else ""
        choices = ", or a transformer block's layer" if tokens else ""
        raise InputError(
            f"--layer {name}: outputs shape {(1, *shape)}, not a (N, C, h, w) feature map{accepted}; "
            f"choose a convolutional layer or block{choices} (`cnnlens layers` lists them with their shapes)"
        )


def coerce_floats(kwargs: dict[str, Any], accepted: dict[str, inspect.Parameter]) -> dict[str, Any]:
    """``kwargs`` with an integer given for a parameter whose default is a float (``-p sigma=2``)
    turned into that float, so parameters keep their declared type."""
    return {
        k: float(v) if isinstance(v, int) and isinstance(accepted[k].default, float) else v
        for k, v in kwargs.items()
    }


def method_choices_help() -> str:
    return "comma-separated methods, or 'all': " + ", ".join(method_names())


def signature_text(cls: type[Attribution]) -> str:
    parts = []
    for name, p in cls.hyperparameters().items():
        parts.append(name if p.default is inspect.Parameter.empty else f"{name}={p.default!r}")
    return ", ".join(parts)
