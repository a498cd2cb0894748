"""Pictures of tools/visualize.py (issue 7): matplotlib on its Agg canvas (no pyplot, no global backend change),
every PNG written through a temporary file and a rename.

Inputs are plain numpy arrays / tensors and dicts, so the figures can be drawn from any source:

* :func:`plot_head_correlations`   paper Fig. 3a, one (h, h) head-correlation heat map per model;
* :func:`plot_token_similarity`    paper Fig. 3b, one curve of patch-token similarity by depth per model;
* :func:`plot_query_masks`         HMG masks m of occluded queries next to the same queries without occluder;
* :func:`plot_rank_lists`          top-k gallery images of each query, with / without masked matching.
"""
import logging

import numpy as np

from ..checkpoint import atomic_write

logger = logging.getLogger("fastreid.dpmpp.analysis.figures")

__all__ = ["new_figure", "save_figure", "plot_head_correlations", "plot_token_similarity", "plot_query_masks",
           "plot_rank_lists", "MATCH_COLOUR", "MISMATCH_COLOUR"]

MATCH_COLOUR = "#1a9850"
MISMATCH_COLOUR = "#d73027"
MAX_ANNOTATED_HEADS = 12     # write the value in every cell up to this many heads


def _numpy(array):
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def new_figure(width, height):
    """A matplotlib Figure with its own Agg canvas (size in inches)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path, dpi=100):
    """Write ``figure`` as a PNG at ``path`` (temporary file + rename: never a half-written picture)."""
    atomic_write(path, "wb", ".png", lambda f: figure.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    return path


def _suptitle(figure, text, gap_inches=0.4):
    """The figure title just above the highest axes (a fixed figure fraction leaves a big gap in tall figures)."""
    top = max(axis.get_position().y1 for axis in figure.axes)
    figure.suptitle(text, y=top + gap_inches / figure.get_figheight(), va="bottom", fontsize=10)


def _bare(axis):
    axis.set_xticks([])
    axis.set_yticks([])


def _frame(axis, colour, width=3.5):
    for spine in axis.spines.values():
        spine.set_visible(colour is not None)
        if colour is not None:
            spine.set_edgecolor(colour)
            spine.set_linewidth(width)


def _check_models(values, what):
    if not values:
        raise ValueError(f"fastreid_dpmpp/analysis/figures.py: {what} needs at least one model")


# ----------------------------------------------------------------------------- Fig. 3a
def plot_head_correlations(correlations, path, title=None):
    """One heat map per model of its mean head correlation C = mean_b Â_b Â_bᵀ (Eq. 18-19), colour scale [−1, 1].

    correlations: {model name: (h, h) array}. The panel title gives the mean off-diagonal entry."""
    _check_models(correlations, "plot_head_correlations")
    count = len(correlations)
    figure = new_figure(3.4 * count + 0.8, 3.6)
    axes = figure.subplots(1, count, squeeze=False)[0]
    image = None
    for axis, (name, matrix) in zip(axes, correlations.items()):
        matrix = _numpy(matrix).astype(float)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"fastreid_dpmpp/analysis/figures.py: head correlation of {name!r} must be (h, h), "
                             f"got {matrix.shape}")
        heads = matrix.shape[0]
        off_diagonal = matrix[~np.eye(heads, dtype=bool)]
        image = axis.imshow(matrix, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
        mean = f"{off_diagonal.mean():.2f}" if off_diagonal.size else "n/a"
        axis.set_title(f"{name}\nmean off-diagonal {mean}", fontsize=9)
        ticks = np.arange(heads)
        axis.set_xticks(ticks, [str(t + 1) for t in ticks], fontsize=7)
        axis.set_yticks(ticks, [str(t + 1) for t in ticks], fontsize=7)
        axis.set_xlabel("head", fontsize=8)
        axis.set_ylabel("head", fontsize=8)
        if heads <= MAX_ANNOTATED_HEADS:
            for row in range(heads):
                for column in range(heads):
                    value = matrix[row, column]
                    axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=6,
                              color="white" if abs(value) > 0.6 else "black")
    figure.colorbar(image, ax=list(axes), fraction=0.03, pad=0.03)
    _suptitle(figure, title or "Class-token attention: head correlation in the last block (mean over images)",
              gap_inches=0.45)
    return save_figure(figure, path)


# ----------------------------------------------------------------------------- Fig. 3b
def plot_token_similarity(curves, path, title=None):
    """One curve per model: mean pairwise cosine similarity of the patch tokens output by each block.

    curves: {model name: (L,) array}, block 1 first."""
    _check_models(curves, "plot_token_similarity")
    figure = new_figure(4.8, 3.4)
    axis = figure.subplots()
    depth = 0
    for name, values in curves.items():
        values = _numpy(values).astype(float).reshape(-1)
        blocks = np.arange(1, values.size + 1)
        depth = max(depth, values.size)
        axis.plot(blocks, values, marker="o", markersize=4, label=name)
    axis.set_xticks(np.arange(1, depth + 1))
    axis.set_xlabel("block")
    axis.set_ylabel("mean pairwise cosine similarity\nof the patch tokens")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(title or "Patch-token similarity by depth (mean over images)", fontsize=10)
    return save_figure(figure, path)


# ----------------------------------------------------------------------------- HMG masks
def _mask_label(kind, mask):
    return f"{kind}: mean {mask.mean():.2f}, {(mask < 0.5).mean() * 100:.0f} % < 0.5"


def plot_query_masks(rows, path, title=None):
    """One line per query: the occluded query, the same query without occluder (if any), and their HMG masks
    m ∈ (0, 1)^D as heat strips over the D feature channels.

    rows: list of dicts with ``name`` (str), ``image`` (H, W, 3) and ``mask`` (D,) of the occluded query, and
    optionally ``holistic_image`` / ``holistic_mask`` for the same query without occluder. Channels are sorted
    by the occluded query's mask (ascending) and the holistic mask is drawn in the same channel order, so the
    channels the occluder switched off are side by side."""
    if not rows:
        raise ValueError("fastreid_dpmpp/analysis/figures.py: plot_query_masks needs at least one query")
    with_holistic = any(row.get("holistic_image") is not None for row in rows)
    image_columns = 2 if with_holistic else 1
    figure = new_figure(1.1 * image_columns + 6.0, 2.0 * len(rows) + 0.5)
    grid = figure.add_gridspec(len(rows), image_columns + 1, width_ratios=[1] * image_columns + [5.5],
                               hspace=0.45, wspace=0.08)
    shown = None
    for line, row in enumerate(rows):
        mask = _numpy(row["mask"]).astype(float).reshape(-1)
        order = np.argsort(mask, kind="stable")
        axis = figure.add_subplot(grid[line, 0])
        axis.imshow(_numpy(row["image"]))
        _bare(axis)
        axis.set_xlabel(str(row.get("name", "")), fontsize=6)
        if line == 0:
            axis.set_title("occluded", fontsize=8)
        strips = [(mask, _mask_label("occluded", mask))]
        if with_holistic:
            axis = figure.add_subplot(grid[line, 1])
            _bare(axis)
            if line == 0:
                axis.set_title("no occluder", fontsize=8)
            if row.get("holistic_image") is not None:
                axis.imshow(_numpy(row["holistic_image"]))
                holistic = _numpy(row["holistic_mask"]).astype(float).reshape(-1)
                if holistic.shape != mask.shape:
                    raise ValueError(f"fastreid_dpmpp/analysis/figures.py: masks of {row.get('name')!r} differ in "
                                     f"size: {mask.shape} vs {holistic.shape}")
                strips.append((holistic, _mask_label("no occluder", holistic)))
        inner = grid[line, image_columns].subgridspec(len(strips), 1, hspace=0.9)
        for position, (values, label) in enumerate(strips):
            axis = figure.add_subplot(inner[position, 0])
            shown = axis.imshow(values[order][None, :], aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                                interpolation="nearest")
            axis.set_yticks([])
            axis.set_xticks([])
            axis.set_title(label, fontsize=7, loc="left")
        if line == len(rows) - 1:
            axis.set_xlabel(f"{mask.size} mask channels, sorted by the occluded query's mask", fontsize=7)
    figure.colorbar(shown, ax=figure.axes, fraction=0.015, pad=0.01)
    _suptitle(figure, title or "HMG prototype masks m of occluded queries")
    return save_figure(figure, path)


# ----------------------------------------------------------------------------- rank lists
def plot_rank_lists(rows, path, title=None):
    """Rank lists: for every query one line per matching mode — the query, then its top-k gallery images framed
    green (same identity) / red (another identity) with their similarity.

    rows: list of dicts with ``image`` (H, W, 3), ``name`` (str) and ``lists``: [(mode label, [(image, score,
    is_match), ...]), ...]."""
    if not rows:
        raise ValueError("fastreid_dpmpp/analysis/figures.py: plot_rank_lists needs at least one query")
    lines = [(row, label, hits) for row in rows for label, hits in row["lists"]]
    top_k = max(len(hits) for _, _, hits in lines)
    figure = new_figure(1.05 * (top_k + 1) + 0.6, 2.25 * len(lines) + 0.4)
    axes = figure.subplots(len(lines), top_k + 1, squeeze=False)
    previous = None
    for line, (row, label, hits) in enumerate(lines):
        query_axis = axes[line, 0]
        query_axis.imshow(_numpy(row["image"]))
        if row is not previous:
            query_axis.set_title(str(row.get("name", "query")), fontsize=6)
        previous = row
        _bare(query_axis)
        query_axis.set_ylabel(label, fontsize=7)
        for column in range(1, top_k + 1):
            axis = axes[line, column]
            _bare(axis)
            if column > len(hits):
                axis.set_axis_off()
                continue
            image, score, is_match = hits[column - 1]
            axis.imshow(_numpy(image))
            _frame(axis, MATCH_COLOUR if is_match else MISMATCH_COLOUR)
            axis.set_title(f"#{column} {score:.3f}", fontsize=7)
    _suptitle(figure, title or "Rank lists (green: same identity, red: another identity)")
    return save_figure(figure, path)


# ----------------------------------------------------------------------------- mask headroom (issue 13)
def plot_bar_panels(panels, path, title=None, reference_label="plain", xlabel="mAP occluded queries (%)"):
    """A grid of horizontal bar charts with error bars, one panel per (row, column) of ``panels``:
    [[(panel title, [(bar label, mean, std), ...]), ...], ...]; a dashed line marks each panel's
    ``reference_label`` bar."""
    if not panels or not panels[0]:
        raise ValueError("fastreid_dpmpp/analysis/figures.py: plot_bar_panels needs at least one panel")
    rows, columns = len(panels), max(len(r) for r in panels)
    figure = new_figure(4.6 * columns, 0.32 * max(len(p[1]) for r in panels for p in r) * rows + 1.0 * rows)
    axes = np.atleast_2d(figure.subplots(rows, columns, squeeze=False))
    for row, row_panels in enumerate(panels):
        for column, (panel_title, bars) in enumerate(row_panels):
            axis = axes[row, column]
            labels, means, stds = zip(*bars)
            positions = np.arange(len(bars))[::-1]
            axis.barh(positions, means, xerr=stds, color="#7aa6c2", edgecolor="#2b5d7d", capsize=2)
            axis.set_yticks(positions)
            axis.set_yticklabels(labels, fontsize=8)
            for position, mean, std in zip(positions, means, stds):
                axis.text(mean + std + 0.8, position, f"{mean:.1f}", va="center", fontsize=7)
            if reference_label in labels:
                axis.axvline(means[labels.index(reference_label)], color="#444444", linestyle="--", linewidth=1)
            axis.set_xlim(0, max(m + s for m, s in zip(means, stds)) * 1.15)
            axis.set_title(panel_title, fontsize=9)
            axis.set_xlabel(xlabel, fontsize=8)
            axis.grid(axis="x", alpha=0.3)
        for column in range(len(row_panels), columns):
            axes[row, column].set_visible(False)
    figure.tight_layout()
    if title:
        _suptitle(figure, title)
    return save_figure(figure, path)
