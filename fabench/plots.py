"""Result records -> figures (matplotlib, Agg backend; PNG and SVG).

* :func:`robustness_figure`: worst-case robust accuracy against the L2 radius, one panel per task,
  one line per recipe (configuration group), the mean over seeds with a ± one standard deviation
  band (the paper's Figure 3).
* :func:`cosine_figure`: the heatmap of cosine similarities between hidden units (for the
  ``fine`` head: groups) and the features ``mu_j`` (the paper's Figure 2), from
  ``Record.cosine_matrix``.

Output is deterministic: the same records give byte-identical files (no dates in the metadata, a
fixed SVG hash salt), so the published leaderboard can be regenerated exactly. Nothing here prints.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fabench.leaderboard import Group, group_records, record_problem  # noqa: E402
from fabench.records import RecordWarning  # noqa: E402
from fabench.records import Record, radius_key  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from fabench.leaderboard import Leaderboard

FORMATS = ("png", "svg")
MAX_TICK_LABELS = 40


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _seeds_text(seeds: Sequence[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def _label(g: Group, groups: Sequence[Group]) -> str:
    """Legend label of a group: the recipe, with its config id when the recipe has several."""
    same = [h for h in groups if h.task == g.task and h.recipe == g.recipe]
    name = g.recipe if len(same) == 1 else f"{g.recipe} [{g.config_id}]"
    source = g.records[0].sources.get("recipe", "fabench")
    if source != "fabench":
        name += f" ({source})"
    return name + f", n={len(g.seeds)}" + (", subset" if g.data_subset else "")


def curve(group: Group) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(radii, mean, std)`` of the worst-case robust accuracy over the group's seeds, on the
    radii every record of the group has (std is 0 with one seed)."""
    common = sorted(set.intersection(*[{float(r) for r in rec.radii} for rec in group.records]))
    values = np.full((len(group.records), len(common)), np.nan)
    for i, rec in enumerate(group.records):
        worst = rec.robust_accuracy.get("worst", {})
        for j, r in enumerate(common):
            v = worst.get(radius_key(r))
            values[i, j] = float(v) if v is not None else np.nan
    with warnings.catch_warnings():  # an all-NaN column is NaN, said by the plot, not by numpy on stderr
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=0) if len(common) else np.zeros(0)
        std = np.nanstd(values, axis=0, ddof=1) if len(group.records) > 1 else np.zeros(len(common))
    return np.array(common), mean, np.nan_to_num(std)


def robustness_figure(records: Iterable[Record], *, title: str | None = None) -> Figure:
    """Robust accuracy vs L2 radius: one panel per task, one line (mean ± std band) per group."""
    groups = group_records(records)
    tasks = sorted({g.task for g in groups})
    if not tasks:
        raise ValueError("no records to plot")
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.4), squeeze=False)
    colors = plt.get_cmap("tab10")
    recipes = sorted({g.recipe for g in groups})
    for ax, task in zip(axes[0], tasks):
        tgroups = [g for g in groups if g.task == task]
        for k, g in enumerate(tgroups):
            radii, mean, std = curve(g)
            color = colors(recipes.index(g.recipe) % 10)
            style = "-" if [h.recipe for h in tgroups].index(g.recipe) == k else "--"
            ax.plot(radii, mean, style, color=color, marker="o", markersize=2.5, linewidth=1.6,
                    label=_label(g, groups))
            if len(g.records) > 1:
                ax.fill_between(radii, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1),
                                color=color, alpha=0.2, linewidth=0)
        attacks = sorted({a for g in tgroups for a in g.attacks})
        seeds = sorted({s for g in tgroups for s in g.seeds})
        subset = " (data subset)" if any(g.data_subset for g in tgroups) else ""
        ax.set_title(f"task: {task}{subset}\nworst case over {', '.join(attacks)}\n{_seeds_text(seeds)}",
                     fontsize=9)
        ax.set_xlabel("L2 radius ε (input units)")
        ax.set_ylabel("robust accuracy (fraction of test points)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best", title="recipe", title_fontsize=8)
    fig.suptitle(title or "Robust accuracy against L2 radius (mean ± std over seeds)", fontsize=11)
    fig.tight_layout()
    return fig


def cosine_figure(record: Record, *, title: str | None = None) -> Figure:
    """Heatmap of ``cos(w_u, mu_j)``: rows are hidden units (or groups), columns features."""
    cm = record.cosine_matrix
    values = np.array(cm.get("values") or [[np.nan]], dtype=float)
    units = list(cm.get("units") or [f"unit {u}" for u in range(values.shape[0])])
    pos = list(cm.get("positive_features") or [False] * values.shape[1])
    features = [f"{name} ({'+' if p else '−'})"
                for name, p in zip(cm.get("features") or [f"mu{j}" for j in range(values.shape[1])], pos)]
    height = min(12.0, 2.2 + 0.22 * values.shape[0])
    width = min(14.0, 3.5 + 0.45 * values.shape[1])
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(values, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    if values.size <= 200:  # small matrices: print the cosines in the cells
        for (u, j), v in np.ndenumerate(values):
            if not np.isnan(v):
                ax.text(j, u, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if abs(v) > 0.6 else "black")
    ax.set_xticks(range(len(features)), features, rotation=45, ha="right", fontsize=8)
    step = max(1, math.ceil(len(units) / MAX_TICK_LABELS))
    ax.set_yticks(range(0, len(units), step), units[::step], fontsize=7)
    ax.set_xlabel("feature μ_j (class; + = positive class J+, − = J−)")
    ax.set_ylabel("hidden unit / group (weight vector w)")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("cosine similarity cos(w, μ_j) (unitless)")
    fa = record.fa_score
    fa_text = "n/a" if fa is None or (isinstance(fa, float) and math.isnan(fa)) else f"{fa:.3f}"
    subset = " (data subset)" if record.data_info.get("data_subset") else ""
    ax.set_title(title or (f"Cosine similarity of units with features\ntask: {record.task}{subset} · recipe: "
                           f"{record.recipe} · seed {record.seed}\nFA score {fa_text} · attacks: "
                           f"{', '.join(record.attacks)}"), fontsize=9)
    fig.tight_layout()
    return fig


def save(fig: Figure, stem: Path, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` as ``stem.png`` and ``stem.svg`` deterministically and close it."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    # A fixed hash salt makes SVG element ids reproducible; glyphs as paths need no font files.
    with matplotlib.rc_context({"svg.hashsalt": "fabench", "svg.fonttype": "path", "font.family": "DejaVu Sans"}):
        for fmt in formats:
            path = stem.with_suffix(f".{fmt}")
            metadata: dict[str, Any] = {"Software": None}
            if fmt == "svg":
                metadata = {"Date": None, "Creator": None}
            fig.savefig(path, format=fmt, dpi=120, metadata=metadata)
            paths.append(path)
    plt.close(fig)
    return paths


def cosine_stem(out_dir: Path, g: Group, groups: Sequence[Group]) -> Path:
    same = [h for h in groups if h.task == g.task and h.recipe == g.recipe]
    suffix = "" if len(same) == 1 else f"-{g.config_id}"
    return out_dir / f"cosine-{_safe(g.task)}-{_safe(g.recipe)}{suffix}"


def publish_figures(board: "Leaderboard", out_dir: Path) -> dict[str, list[tuple[str, Path]]]:
    """The leaderboard's figures: the robustness curves of all tasks (key ``""``) and, per task,
    one cosine heatmap per group (of its lowest seed). Values are ``(alt text, path)`` pairs."""
    groups = board.groups
    out: dict[str, list[tuple[str, Path]]] = {}
    records = [r for g in groups for r in g.records]
    alt = "Robust accuracy against L2 radius, one panel per task, one line per recipe"
    out[""] = [(alt, p) for p in save(robustness_figure(records), out_dir / "robust_accuracy")]
    for g in groups:
        rec = g.records[0]
        alt = f"Cosine similarity of units with features, {g.task}, {g.recipe}, seed {rec.seed}"
        paths = save(cosine_figure(rec), cosine_stem(out_dir, g, groups))
        out.setdefault(g.task, []).extend((alt, p) for p in paths)
    return out


def drawable(records: Iterable[Record]) -> list[Record]:
    """The records that can be drawn: each one :func:`fabench.leaderboard.record_problem` refuses
    (wrong field types, impossible numbers, a wrong identity) is left out with one
    :class:`~fabench.records.RecordWarning` line, so it never reaches matplotlib or numpy."""
    out = []
    for rec in records:
        problem = record_problem(rec)
        if problem:
            what = f"{rec.task}/{rec.recipe} seed {rec.seed}" if isinstance(rec.task, str) else "a record"
            warnings.warn(f"fabench: skipping {what} in the figures: {problem}", RecordWarning, stacklevel=2)
            continue
        out.append(rec)
    return out


@contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
    """A hidden directory beside ``out_dir`` to draw into; on success its files replace those of the
    same names in ``out_dir`` (created if needed), on failure it is removed and ``out_dir`` is left
    as it was (never half-written, never created)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-", suffix=".tmp"))
    except OSError:  # a writable out_dir in a read-only parent: stage inside it
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".figures-", suffix=".tmp"))
    try:
        yield tmp
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(tmp.iterdir()):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _moved(paths: Iterable[Path], tmp: Path, out_dir: Path) -> list[Path]:
    return sorted(out_dir / p.relative_to(tmp) for p in paths)


def plot_all(records: Iterable[Record], *, out_dir: Path) -> list[Path]:
    """Robustness curves (all tasks) and one cosine heatmap per group; returns the paths, sorted.
    Records that cannot be drawn are left out (:func:`drawable`); the figures are written
    together (:func:`staged`)."""
    groups = group_records(drawable(records))
    if not groups:
        raise ValueError("no records to plot")
    with staged(out_dir) as tmp:
        paths = save(robustness_figure([r for g in groups for r in g.records]), tmp / "robust_accuracy")
        for g in groups:
            paths += save(cosine_figure(g.records[0]), cosine_stem(tmp, g, groups))
    return _moved(paths, tmp, out_dir)


def plot_evaluation(records: Sequence[Record], *, out_dir: Path) -> list[Path]:
    """Figures of one ``fabench evaluate`` run (one task and recipe, several seeds):
    ``robust_accuracy-<task>-<recipe>`` and ``cosine-<task>-<recipe>`` (lowest seed)."""
    records = drawable(records)
    groups = group_records(records)
    if not groups:
        raise ValueError("no records to plot")
    task, recipe = _safe(groups[0].task), _safe(groups[0].recipe)
    with staged(out_dir) as tmp:
        paths = save(robustness_figure(records), tmp / f"robust_accuracy-{task}-{recipe}")
        for g in groups:
            paths += save(cosine_figure(g.records[0]), cosine_stem(tmp, g, groups))
    return _moved(paths, tmp, out_dir)
