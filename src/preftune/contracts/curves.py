"""`curves.png`: a run's loss, reward accuracy and reward margin, train and eval, as one picture.

Drawn the same way by the trainer (into the run's output directory, next to `metrics.jsonl`) and by
the server for a job still running (from its stored metric lines), so it lives here, below both.
matplotlib with the Agg backend: no display, no torch.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CURVES_FILE = "curves.png"
# (panel title, [(metric key, label)]): train lines solid, eval lines dashed with markers.
PANELS: list[tuple[str, list[tuple[str, str]]]] = [
    ("loss", [("loss", "loss")]),
    (
        "accuracy",
        [("rewards/accuracies", "reward accuracy"), ("preference_accuracy", "preference accuracy")],
    ),
    ("reward margin", [("rewards/margins", "margin")]),
]


def _series(lines: Iterable[dict[str, Any]], split: str, key: str) -> tuple[list[float], list[float]]:
    points = sorted(
        (float(line["step"]), float(line[key]))
        for line in lines
        if line.get("split", "train") == split
        and isinstance(line.get(key), int | float)
        and isinstance(line.get("step"), int | float)
        and math.isfinite(float(line[key]))
    )
    return [p[0] for p in points], [p[1] for p in points]


def render_curves(lines: list[dict[str, Any]], title: str | None = None) -> bytes:
    """The PNG of `lines` (metrics.jsonl objects); panels without data say so."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3.6), dpi=100, layout="constrained")
    axes = figure.subplots(1, len(PANELS))
    for ax, (name, metrics) in zip(axes, PANELS, strict=True):
        drawn = False
        for index, (key, label) in enumerate(metrics):
            color = f"C{index}"
            for split, style in (("train", {"linestyle": "-"}), ("eval", {"linestyle": "--", "marker": "o"})):
                xs, ys = _series(lines, split, key)
                if not xs:
                    continue
                ax.plot(xs, ys, color=color, label=f"{label} ({split})", linewidth=1.5, **style)  # type: ignore[arg-type]
                drawn = True
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="gray")
    if title:
        figure.suptitle(title, fontsize=10)
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def write_curves(lines: list[dict[str, Any]], path: Path, title: str | None = None) -> Path:
    """Write `render_curves(lines)` to `path` atomically (a reader never sees half a PNG)."""
    import os
    import tempfile

    data = render_curves(lines, title)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
