"""Pictures of an evaluation: the CMC curve and ranked lists.

matplotlib is imported inside the functions and drives an Agg canvas directly (no pyplot), so
importing this module is free, nothing depends on a display, and no global backend is switched
under another library's feet.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from reid.errors import ReidError

if TYPE_CHECKING:
    from reid.evaluation.metrics import EvalResult

MATCH_COLOR = (0, 170, 0)
WRONG_COLOR = (220, 0, 0)
QUERY_COLOR = (40, 90, 220)
EMPTY_COLOR = (200, 200, 200)


def _figure(width: float, height: float):  # -> matplotlib.figure.Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_cmc(results: "EvalResult | Mapping[str, EvalResult]", path: Path | str, title: str = "CMC") -> Path:
    """Draw one or several CMC curves (rank 1..max_rank, in %) with mAP and rank-1 in the legend."""
    from reid.evaluation.metrics import EvalResult

    curves = {"": results} if isinstance(results, EvalResult) else dict(results)
    if not curves:
        raise ValueError("plot_cmc needs at least one result")
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for name, res in curves.items():
        ranks = np.arange(1, len(res.cmc) + 1)
        label = f"mAP {100 * res.mAP:.1f}, rank-1 {100 * res.cmc[0]:.1f}"
        if res.rerank:
            label += ", re-ranked"
        ax.plot(ranks, 100 * np.asarray(res.cmc), marker="." if len(ranks) <= 20 else None,
                label=f"{name}: {label}" if name else label)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_xlim(1, max(len(r.cmc) for r in curves.values()))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _tile(image_path: str | None, size: tuple[int, int], border: tuple[int, int, int], width: int) -> np.ndarray:
    """An image resized to ``size`` (h, w) inside a coloured border; a grey tile if it is missing."""
    from PIL import Image, ImageOps

    h, w = size
    try:
        if image_path is None:
            raise FileNotFoundError
        from reid.data.pack import image_source  # a file, or an image inside a dataset pack

        with Image.open(image_source(image_path)) as im:
            img = im.convert("RGB").resize((w, h))
    except (OSError, FileNotFoundError, ReidError):
        img = Image.new("RGB", (w, h), EMPTY_COLOR)
    return np.asarray(ImageOps.expand(img, border=width, fill=border))


def ranked_list_figure(
    query_paths: Sequence[str],
    gallery_paths: Sequence[Sequence[str | None]],
    ranked_indices: np.ndarray | None,
    match_flags: np.ndarray,
    path: Path | str,
    image_size: tuple[int, int] = (128, 64),
    border: int = 4,
) -> Path:
    """One row per query: the query (blue border), then its top gallery images, green when correct
    and red when wrong. Junk is excluded upstream (:func:`reid.evaluation.metrics.ranked_lists`).

    ``gallery_paths[i][j]`` is the path shown at rank j+1 of query i, or, when ``ranked_indices`` is
    given, ``gallery_paths`` is the flat gallery list and ``ranked_indices[i, j]`` indexes it (-1 = empty).
    """
    flags = np.asarray(match_flags, dtype=bool)
    rows, cols = flags.shape
    if len(query_paths) != rows:
        raise ValueError(f"{len(query_paths)} query paths for {rows} rows of match flags")
    if ranked_indices is not None:
        idx = np.asarray(ranked_indices)
        flat = list(gallery_paths)
        shown: list[list[str | None]] = [[flat[j] if j >= 0 else None for j in row] for row in idx]
    else:
        shown = [list(row) for row in gallery_paths]
    fig = _figure(1.0 + 0.75 * (cols + 1), 0.3 + 1.5 * max(rows, 1))
    for i in range(rows):
        for j in range(cols + 1):
            ax = fig.add_subplot(max(rows, 1), cols + 1, i * (cols + 1) + j + 1)
            ax.set_axis_off()
            if j == 0:
                ax.imshow(_tile(query_paths[i], image_size, QUERY_COLOR, border))
                ax.set_title("query", fontsize=7)
                continue
            p = shown[i][j - 1] if j - 1 < len(shown[i]) else None
            color = EMPTY_COLOR if p is None else (MATCH_COLOR if flags[i, j - 1] else WRONG_COLOR)
            ax.imshow(_tile(p, image_size, color, border))
            ax.set_title(str(j), fontsize=7)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.01, wspace=0.05, hspace=0.25)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
