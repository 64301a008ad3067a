"""Figures: valid PNG/SVG, titles naming task, recipe, attacks and seeds; mean and spread; determinism."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from fabench import plots
from fabench.cli import main
from fabench.leaderboard import group_records
from fabench.records import write_record
from test_leaderboard import make_record, three_seeds

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def svg_texts(path: Path) -> str:
    """The text of an SVG figure: matplotlib draws glyphs as paths and keeps each text as a comment."""
    data = path.read_text(encoding="utf-8")
    ET.fromstring(data)  # well-formed XML
    return "\n".join(re.findall(r"<!-- (.*?) -->", data))


def test_curve_is_mean_and_sample_std_over_seeds() -> None:
    (group,) = group_records(three_seeds())
    radii, mean, std = plots.curve(group)
    assert list(radii) == [0.0, 10.0, 20.0]
    np.testing.assert_allclose(mean, [0.9, np.mean([0.5, 0.6, 0.9]), 0.1])
    np.testing.assert_allclose(std, [0.1, np.std([0.5, 0.6, 0.9], ddof=1), 0.1])


def test_robustness_figure_has_one_panel_per_task_and_one_line_per_recipe() -> None:
    records = three_seeds() + [make_record(recipe="fine", seed=s) for s in (0, 1)]
    records += [make_record(task="cifar", subset=True, attacks=("deepfool",))]
    fig = plots.robustness_figure(records)
    cifar, synthetic = fig.axes
    assert "task: cifar (data subset)" in cifar.get_title() and "deepfool" in cifar.get_title()
    assert "task: synthetic" in synthetic.get_title() and "seeds 0, 1, 2" in synthetic.get_title()
    assert "analytic, pgd" in synthetic.get_title()
    labels = [t.get_text() for t in synthetic.get_legend().get_texts()]
    assert labels == ["binary, n=3", "fine, n=2"]
    assert synthetic.get_xlabel().startswith("L2 radius") and "robust accuracy" in synthetic.get_ylabel()
    assert len(synthetic.collections) == 2  # a spread band for each multi-seed line
    np.testing.assert_allclose(synthetic.lines[0].get_ydata(), [0.9, 2 / 3, 0.1])


def test_figures_are_valid_png_and_svg_and_deterministic(tmp_path: Path) -> None:
    records = three_seeds() + [make_record(recipe="fine")]
    first = plots.plot_all(records, out_dir=tmp_path / "a")
    second = plots.plot_all(list(reversed(records)), out_dir=tmp_path / "b")
    assert [p.name for p in first] == ["cosine-synthetic-binary.png", "cosine-synthetic-binary.svg",
                                      "cosine-synthetic-fine.png", "cosine-synthetic-fine.svg",
                                      "robust_accuracy.png", "robust_accuracy.svg"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
        if a.suffix == ".png":
            assert a.read_bytes().startswith(PNG_MAGIC)
    texts = svg_texts(tmp_path / "a" / "robust_accuracy.svg")
    assert "task: synthetic" in texts and "seeds 0, 1, 2" in texts and "binary, n=3" in texts
    assert "L2 radius ε (input units)" in texts
    heat = svg_texts(tmp_path / "a" / "cosine-synthetic-binary.svg")
    assert "recipe: binary" in heat and "seed 0" in heat and "attacks: analytic, pgd" in heat
    assert "cosine similarity cos(w, μ_j) (unitless)" in heat
    assert "Date" not in (tmp_path / "a" / "robust_accuracy.svg").read_text()


def test_cosine_figure_shows_the_matrix() -> None:
    rec = make_record()
    fig = plots.cosine_figure(rec)
    (ax, _colorbar) = fig.axes
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.9, -0.1], [-0.1, 0.8]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a (+)", "b (−)"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["w+0", "w-0"]


def test_fabench_plot_command(tmp_path: Path) -> None:
    for rec in three_seeds():
        write_record(rec, tmp_path / "res")
    out = io.StringIO()
    assert main(["plot", "--results", str(tmp_path / "res"), "--out", str(tmp_path / "fig")], out=out) == 0
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == [
        "cosine-synthetic-binary.png", "cosine-synthetic-binary.svg", "robust_accuracy.png", "robust_accuracy.svg"]
    assert out.getvalue().count("wrote ") == 4


@pytest.mark.slow
def test_evaluate_seeds_reuses_finished_records_and_plots(tmp_path: Path) -> None:
    """`fabench evaluate --seeds 0,1 --plot` runs both seeds, then reuses them on a rerun."""
    base = ["evaluate", "--task", "synthetic", "--recipe", "binary", "--attacks", "analytic",
            "--set", "d=64", "--set", "n_train=100", "--set", "n_test=100", "--set", "steps=20",
            "--epsilons", "0:8:2", "--out", str(tmp_path / "res"), "-q"]
    argv = base + ["--seeds", "0,1", "--plot"]
    out = io.StringIO()
    assert main(argv, out=out) == 0
    text = out.getvalue()
    assert "== seed 0 ==" in text and "== seed 1 ==" in text and "reused" not in text
    assert len(list((tmp_path / "res").rglob("seed*.json"))) == 2
    figures = sorted(p.name for p in (tmp_path / "res" / "figures").iterdir())
    assert figures == ["cosine-synthetic-binary.png", "cosine-synthetic-binary.svg",
                       "robust_accuracy-synthetic-binary.png", "robust_accuracy-synthetic-binary.svg"]
    assert "seeds 0, 1" in svg_texts(tmp_path / "res" / "figures" / "robust_accuracy-synthetic-binary.svg")
    out = io.StringIO()
    assert main(base + ["--seeds", "0:2"], out=out) == 0
    assert out.getvalue().count("reused finished record") == 2
    assert main(base + ["--seed", "1", "--seeds", "0,1"], out=io.StringIO()) == 2
    assert main(base + ["--seeds", "a,b"], out=io.StringIO()) == 2


@pytest.mark.parametrize("case", ["acc-nan", "radius-missing", "fa-nan", "cosine-ragged", "seed-negative"])
def test_plot_leaves_out_a_record_it_cannot_draw(tmp_path: Path, case: str, capsys) -> None:
    """``fabench plot`` on good records and one it cannot draw (a NaN accuracy, a missing radius,
    ...): one warning line naming it, the figures of the rest, and no numpy RuntimeWarning on
    stderr (before: the record was averaged in, with 'Mean of empty slice' or 'Degrees of
    freedom <= 0' warnings, or the cosine heatmap crashed)."""
    import json
    import math

    from fabench.records import config_key

    changes = {
        "acc-nan": lambda o: o["robust_accuracy"]["worst"].__setitem__("10", math.nan),
        "radius-missing": lambda o: o["robust_accuracy"]["worst"].pop("20"),
        "fa-nan": lambda o: o.__setitem__("fa_score", math.nan),
        "cosine-ragged": lambda o: o["cosine_matrix"].__setitem__("values", [[0.1, 0.2], [0.3]]),
        "seed-negative": lambda o: (o.__setitem__("seed", -1), o["config"].__setitem__("seed", -1)),
    }
    res = tmp_path / "res"
    for rec in three_seeds()[1:]:
        write_record(rec, res)
    bad = write_record(make_record(seed=0), res)
    obj = json.loads(bad.read_text())
    changes[case](obj)
    obj["key"] = config_key(obj["config"])
    bad.unlink()
    bad.with_name(f"seed{obj['seed']}-{obj['key'][:16]}.json").write_text(json.dumps(obj))
    assert main(["plot", "--results", str(res), "--out", str(tmp_path / "fig")], out=io.StringIO()) == 0
    err = capsys.readouterr().err
    (line,) = err.splitlines()
    assert line.startswith("fabench: warning: skipping") and "RuntimeWarning" not in err
    assert "seeds 1, 2" in svg_texts(tmp_path / "fig" / "robust_accuracy.svg")


def test_a_failed_plot_leaves_no_half_written_directory(tmp_path: Path, monkeypatch) -> None:
    """The figures are drawn into a hidden directory and moved in only when all are drawn."""
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(plots, "cosine_figure", boom)
    with pytest.raises(RuntimeError):
        plots.plot_all(three_seeds(), out_dir=tmp_path / "fig")
    assert list(tmp_path.iterdir()) == []
