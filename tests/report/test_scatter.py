"""The interactive scatter: one point per row, class names escaped, nothing fetched from a network."""

from __future__ import annotations

import re

import numpy as np

from cnnlens.report.scatter import scatter_html


def test_points_colours_and_escaping() -> None:
    coords = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 1.0]])
    page = scatter_html(
        "embed", coords, [0, 1, -1], ["<b>cat</b>", "dog"], ["data:image/png;base64,AA==", None, None]
    )
    assert page.count("<circle") == 3 and page.count("data-i=") == 3
    assert "<b>cat</b>" not in page and "&lt;b&gt;cat&lt;/b&gt;" in page
    assert 'fill="#999999"' in page  # the unlabelled point is grey
    assert "http" not in page and "</script>" in page and page.count("</script>") == 1
    xs = [float(v) for v in re.findall(r'cx="([0-9.]+)"', page)]
    assert min(xs) == 10 and max(xs) == 630  # scaled into the 640 px square with 10 px padding


def test_a_caption_cannot_close_the_script() -> None:
    page = scatter_html("e", np.zeros((2, 2)), [0, 0], ["a"], [None, None], captions=["</script><x>", "ok"])
    assert page.count("</script>") == 1
