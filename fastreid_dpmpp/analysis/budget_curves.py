"""Accuracy against the Stage III budget (issue 13): one curve per recipe, one point per budget, read from the rows
of a tools/compare.py report (``{"arm", "mAP": [mean, std], ...}`` per arm and split)."""
from .figures import new_figure, save_figure

__all__ = ["budget_curves", "val_preferred", "plot_budget_curves"]

CURVE_COLOURS = ("#2b5d7d", "#d95f02", "#1b9e77", "#7570b3", "#e7298a")


def budget_curves(rows_by_split, epochs_of, curves):
    """``{label: {split: [(epochs, mean, std), ...]}}`` sorted by epochs, for ``curves`` = ``{label: [arm, ...]}``.

    ``rows_by_split`` is ``{split: [report row, ...]}``, ``epochs_of`` ``{arm: Stage III epochs}``. An arm without a
    row in a split (not run yet) is left out of that split's curve; an arm the spec does not know is an error."""
    unknown = sorted({arm for arms in curves.values() for arm in arms} - set(epochs_of))
    if unknown:
        raise ValueError(f"budget curves: arm(s) {unknown} are not arms of the spec (known: {sorted(epochs_of)})")
    result = {}
    for label, arms in curves.items():
        result[label] = {}
        for split, rows in rows_by_split.items():
            by_arm = {row["arm"]: row for row in rows}
            points = [(epochs_of[arm], *by_arm[arm]["mAP"]) for arm in arms if arm in by_arm]
            epochs = [p[0] for p in points]
            if len(set(epochs)) != len(epochs):
                raise ValueError(f"budget curves: curve {label!r} has two arms with the same budget ({epochs})")
            result[label][split] = sorted(points)
    return result


def val_preferred(points):
    """The (epochs, mean, std) point of a curve with the highest mean: the rule of experiments/budget_map.yml,
    applied to the ``val`` curve only."""
    if not points:
        raise ValueError("budget curves: a curve without points has no preferred budget")
    return max(points, key=lambda point: point[1])


def plot_budget_curves(curves, path, splits=("val", "test1", "test2"), title=None):
    """One panel per split: mAP (mean ± std over seeds) against Stage III epochs, a line per curve; the val-preferred
    budget of every curve is ringed in every panel."""
    if not curves:
        raise ValueError("budget curves: nothing to plot")
    figure = new_figure(4.2 * len(splits), 3.4)
    axes = figure.subplots(1, len(splits), squeeze=False)[0]
    preferred = {label: val_preferred(by_split["val"])[0] if by_split.get("val") else None
                 for label, by_split in curves.items()}
    for axis, split in zip(axes, splits):
        for colour, (label, by_split) in zip(CURVE_COLOURS * 4, curves.items()):
            points = by_split.get(split, [])
            if not points:
                continue
            epochs, means, stds = zip(*points)
            axis.errorbar(epochs, means, yerr=stds, color=colour, marker="o", markersize=4, capsize=3, label=label)
            if preferred[label] in epochs:
                axis.plot([preferred[label]], [means[epochs.index(preferred[label])]], marker="o", markersize=11,
                          markerfacecolor="none", markeredgecolor=colour, linestyle="none")
        axis.set_title(f"{split}: occluded queries", fontsize=9)
        axis.set_xlabel("Stage III epochs", fontsize=8)
        axis.set_ylabel("mAP (%)", fontsize=8)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    if title:
        figure.suptitle(title, fontsize=10, y=1.02)
    return save_figure(figure, path)
