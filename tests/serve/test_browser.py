"""The explorer driven as a person would, in headless Chromium (Debian's ``chromium`` through
Playwright): open the page, upload chelsea, run Grad-CAM and occlusion, read the top-1 class, see the
overlay change with the target, and get the message for an oversized upload; with two models (A and
B), run Grad-CAM on both and see two different overlays on one colour scale.

Skipped, with the reason, where Playwright or ``/usr/bin/chromium`` is missing (``.ci/run`` installs
chromium with the system package manager when it can). Set ``CNNLENS_SCREENSHOTS=DIR`` to keep a
screenshot of the page.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CNNLENS_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        return f"needs playwright and uvicorn ({err})"
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"needs chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


if _missing():
    print(f"skipping the browser tests: {_missing()}")  # the reason, printed as asked
    pytest.skip(_missing() or "", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(explorer: Any) -> Iterator[tuple[str, Any]]:
    """The explorer's app on a free local port in a thread, until the block ends."""
    import uvicorn

    from cnnlens.serve import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(explorer), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 20
    while not server.started and time.monotonic() < end:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/", explorer
    finally:
        server.should_exit = True
        thread.join(10)
        explorer.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    from cnnlens.serve import Explorer, Limits
    from tests.conftest import tiny_loaded

    with serving(Explorer(tiny_loaded(classes=5), limits=Limits(max_bytes=1_000_000))) as served:
        yield served


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        yield context
        context.close()


def test_explorer_in_chromium(server: tuple[str, object], browser: object, tmp_path: Path) -> None:
    from cnnlens.data.samples import load_sample

    url, explorer = server
    chelsea = tmp_path / "chelsea.jpg"
    load_sample("chelsea").save(chelsea, quality=90)
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(url)
    page.wait_for_selector('input[name="method"][value="gradcam"]')
    page.set_input_files("#upload", str(chelsea))
    page.wait_for_selector("#top5-0 li")
    model = explorer.model  # type: ignore[attr-defined]
    top = model.top_k(model.prepare(Image.open(chelsea).convert("RGB")), 5)[0]
    assert page.inner_text("#top5-0 li:first-child .cls") == top[0][1]
    assert page.is_hidden("#which")  # one model: no model choice
    assert page.is_checked('input[value="gradcam"]') and page.is_checked('input[value="occlusion"]')
    page.click("#run")
    for method in ("gradcam", "occlusion"):
        page.wait_for_selector(f'.result[data-method="{method}"] canvas.overlay[data-drawn]', timeout=60_000)
    gradcam = '.result[data-method="gradcam"] canvas.overlay'
    first_key = page.get_attribute(gradcam, "data-key")
    first = page.eval_on_selector(gradcam, "c => c.toDataURL()")
    assert page.get_attribute(gradcam, "data-target") == str(top[0][0])
    page.uncheck('input[value="occlusion"]')
    page.select_option("#target", str(top[1][0]))
    page.click("#run")
    changed = "([sel, key]) => { const c = document.querySelector(sel); return c && c.dataset.key !== key; }"
    page.wait_for_function(changed, arg=[gradcam, first_key], timeout=60_000)
    page.wait_for_selector(f"{gradcam}[data-drawn]")
    assert page.get_attribute(gradcam, "data-target") == str(top[1][0])
    assert page.eval_on_selector(gradcam, "c => c.toDataURL()") != first  # the overlay changed
    # the opacity slider redraws the map
    drawn = page.get_attribute(gradcam, "data-drawn")
    page.fill("#opacity", "0.9")
    page.wait_for_function(f"() => document.querySelector('{gradcam}').dataset.drawn !== '{drawn}'")
    if os.environ.get("CNNLENS_SCREENSHOTS"):
        page.screenshot(path=str(Path(os.environ["CNNLENS_SCREENSHOTS"]) / "explorer.png"), full_page=True)
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (800, 800, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 1_000_000
    page.set_input_files("#upload", str(big))
    page.wait_for_function("() => document.getElementById('error').textContent.length > 0")
    assert "larger than the limit of 1 MB" in page.inner_text("#error")
    page.close()


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    """An explorer of two tinycnns (seeds 0 and 1: different weights, the same classes)."""
    from cnnlens.serve import Explorer
    from tests.conftest import tiny_loaded

    with serving(Explorer([tiny_loaded(seed=0, classes=5), tiny_loaded(seed=1, classes=5)])) as served:
        yield served


def test_two_models_in_chromium(two_servers: tuple[str, object], browser: object, tmp_path: Path) -> None:
    from cnnlens.data.samples import load_sample

    url, explorer = two_servers
    chelsea = tmp_path / "chelsea.jpg"
    load_sample("chelsea").save(chelsea, quality=90)
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(url)
    page.wait_for_selector('input[name="method"][value="gradcam"]')
    assert page.is_visible("#which") and page.input_value("#models") == "both"
    page.set_input_files("#upload", str(chelsea))
    page.wait_for_selector("#top5-1 li")
    image = Image.open(chelsea).convert("RGB")
    for m, model in enumerate(explorer.models):  # type: ignore[attr-defined]
        top = model.top_k(model.prepare(image), 5)[0]
        assert page.inner_text(f"#top5-{m} li:first-child .cls") == top[0][1]
    page.uncheck('input[value="occlusion"]')
    page.click("#run")
    overlays = '.result[data-method="gradcam"] canvas.overlay'
    page.wait_for_function(
        f"() => [...document.querySelectorAll('{overlays}')].filter((c) => c.dataset.drawn).length === 2",
        timeout=60_000,
    )
    assert [page.get_attribute(f"{overlays}[data-model='{m}']", "data-model") for m in (0, 1)] == ["0", "1"]
    keys = page.eval_on_selector_all(overlays, "cs => cs.map((c) => c.dataset.key)")
    assert len(set(keys)) == 2
    pictures = page.eval_on_selector_all(overlays, "cs => cs.map((c) => c.toDataURL())")
    assert pictures[0] != pictures[1]  # two models, two different maps
    maps = [explorer.result(k).attribution for k in keys]  # type: ignore[attr-defined]
    assert not np.allclose(maps[0], maps[1])
    # one colour bar for both, stated as shared
    assert page.locator('.result[data-method="gradcam"] .bar').count() == 1
    assert "shared by these 2 maps" in page.inner_text('.result[data-method="gradcam"] .scale')
    if os.environ.get("CNNLENS_SCREENSHOTS"):
        page.screenshot(
            path=str(Path(os.environ["CNNLENS_SCREENSHOTS"]) / "explorer_two_models.png"), full_page=True
        )
    page.close()
