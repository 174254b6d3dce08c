"""Every registered method on every model of the zoo (tests/attribution/zoo.py): works, or the one line
it stopped with. Prints the Markdown table of docs/methods.md ("Model zoo"); ``--write`` replaces that
section of docs/methods.md.

Each call runs on one random 64 px image with the zoo's cheap settings (few samples, steps, windows),
and checks that the model is left as found (hooks, state_dict, train/eval, requires_grad).

Usage::

    python bench/method_matrix.py [--models resnet50,vit_tiny] [--methods deeplift,lrp] [--write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.attribution import zoo  # noqa: E402
from tests.attribution.test_contract import assert_same, snapshot  # noqa: E402

from cnnlens.attribution import method_names  # noqa: E402
from cnnlens.models import LoadedModel  # noqa: E402

BEGIN = "<!-- model zoo matrix: bench/method_matrix.py --write -->"
END = "<!-- end of the model zoo matrix -->"


def matrix(models: list[str], methods: list[str]) -> str:
    notes: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    for arch in models:
        model = zoo.build(arch)
        module = model.module if isinstance(model, LoadedModel) else model
        x = zoo.image()
        for name in methods:
            before = snapshot(module)
            start = time.perf_counter()
            try:
                status, _ = zoo.run(name, model, x)
            except Exception as error:  # a bug, not a clear stop: shown as such in the table
                status = f"BUG {type(error).__name__}: {str(error).splitlines()[0][:150]}"
            assert_same(before, snapshot(module))
            seconds = time.perf_counter() - start
            print(f"{arch:<20}{name:<22}{seconds:7.2f} s  {status[:90]}", file=sys.stderr, flush=True)
            if status == "ok":
                cells[arch, name] = "ok"
            else:
                if status not in notes:
                    notes.append(status)
                cells[arch, name] = f"stops ({notes.index(status) + 1})"
    lines = [
        "| method | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
        *(f"| `{m}` | " + " | ".join(cells[a, m] for a in models) + " |" for m in methods),
        "",
        *(f"{i}. {note}" for i, note in enumerate(notes, 1)),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(zoo.ZOO))
    parser.add_argument("--methods", default=",".join(method_names()))
    parser.add_argument("--write", action="store_true", help="replace the section of docs/methods.md")
    args = parser.parse_args()
    table = matrix(args.models.split(","), args.methods.split(","))
    print(table)
    if args.write:
        path = ROOT / "docs" / "methods.md"
        text = path.read_text()
        section = f"{BEGIN}\n{table}{END}"
        if BEGIN in text:
            text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
        else:
            text = text.rstrip("\n") + "\n\n## Model zoo\n\n" + section + "\n"
        path.write_text(text)


if __name__ == "__main__":
    main()
