"""Leaderboard: grouping, mean ± std over seeds, ordering, formats, exact regeneration."""

from __future__ import annotations

import copy
import io
import json
import re
import math
import random
import shutil
import statistics
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fabench import leaderboard
from fabench.cli import main
from fabench.records import SCHEMA_VERSION, Record, config_key, radius_key, write_record

from badinputs import _set  # a change to a record's JSON at a dotted path (the bad-input corpus's)

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "leaderboard"


def make_record(task: str = "synthetic", recipe: str = "binary", seed: int = 0, *, clean: float = 1.0,
                robust: dict[float, float] | None = None, dist: float | None = 17.5, fa: float | None = 0.99,
                headline: tuple[float, ...] = (10.0, 20.0), lr: float = 0.001, subset: bool = False,
                attacks: tuple[str, ...] = ("analytic", "pgd"), source: str = "fabench") -> Record:
    """A record with chosen numbers; its config (and key) differ only where the arguments do."""
    robust = robust if robust is not None else {0.0: clean, 10.0: 0.9, 20.0: 0.1}
    radii = sorted(robust)
    config: dict[str, Any] = {
        "schema": SCHEMA_VERSION, "task": task, "task_params": full_params("tasks", task, {"d": 64, "k": 10}),
        "recipe": recipe, "recipe_params": full_params("recipes", recipe, {"lr": lr, "m": 5}, source=source),
        "attacks": {a: full_params("attacks", a, {}) for a in attacks}, "radii": radii,
        "n_eval": 0, "protocol": "full", "seed": seed,
        "sources": {"task": "fabench", "recipe": source, **{f"attack {a}": "fabench" for a in attacks}},
    }
    worst = {radius_key(r): v for r, v in robust.items()}
    return Record(
        task=task, recipe=recipe, seed=seed, config=config, clean_accuracy=clean,
        robust_accuracy={**{a: dict(worst) for a in attacks}, "worst": worst},
        median_min_distance=dist, median_distance={"worst": dist}, fa_score=fa,
        cosine_matrix={"units": ["w+0", "w-0"], "unit_positive": [True, False], "features": ["a", "b"],
                       "positive_features": [True, False], "values": [[0.9, -0.1], [-0.1, 0.8]]},
        n_eval=100, attacks=list(attacks), radii=radii, headline_radii=list(headline),
        data_info={"n_train": 100, "n_test": 100, **({"data_subset": True} if subset else {})},
        sources={"task": "fabench", "recipe": source}, created="2026-01-01T00:00:00+00:00",
        key=config_key(config),
    )


def full_params(kind: str, name: str, given: dict[str, Any], *, source: str = "fabench") -> dict[str, Any]:
    """A registered part's parameters as evaluate writes them (every one: ``given``, where the part
    has it, else its default), or ``given`` as it is for a part not registered here (``mnist``, a plugin)."""
    from fabench import params as P
    from fabench import registry
    from fabench.errors import UnknownNameError
    from fabench.models.backbones import effective_params

    try:
        meta = registry.REGISTRIES[kind].entry(f"{name}@{source}").meta
    except UnknownNameError:
        return dict(given)
    out = P.resolve(meta.params, {k: v for k, v in given.items() if k in meta.params}, owner=name)
    return effective_params(out) if kind == "recipes" else out


def three_seeds() -> list[Record]:
    return [
        make_record(seed=0, clean=0.8, robust={0.0: 0.8, 10.0: 0.5, 20.0: 0.1}, dist=10.0, fa=0.9),
        make_record(seed=1, clean=0.9, robust={0.0: 0.9, 10.0: 0.6, 20.0: 0.2}, dist=12.0, fa=0.95),
        make_record(seed=2, clean=1.0, robust={0.0: 1.0, 10.0: 0.9, 20.0: 0.0}, dist=14.0, fa=1.0),
    ]


def test_mean_and_sample_std_over_seeds() -> None:
    board = leaderboard.build(three_seeds())
    (table,) = board.tables
    assert table.task == "synthetic" and table.headline_radii == (10.0, 20.0)
    assert [g.seeds for g in table.groups] == [(0, 1, 2)]
    mean, std = table.stat(0, "clean_accuracy")
    assert mean == pytest.approx(0.9) and std == pytest.approx(statistics.stdev([0.8, 0.9, 1.0]))
    mean, std = table.stat(0, leaderboard.robust_column(10.0))
    assert mean == pytest.approx(statistics.mean([0.5, 0.6, 0.9]))
    assert std == pytest.approx(statistics.stdev([0.5, 0.6, 0.9]))
    assert table.stat(0, "median_min_distance") == pytest.approx((12.0, 2.0))
    (row,) = leaderboard.rows(board)
    assert row["n_seeds"] == 3 and row["seeds"] == [0, 1, 2]
    assert row["clean_accuracy_mean"] == pytest.approx(0.9)
    assert row["robust_accuracy_20_mean"] == pytest.approx(0.1)
    assert row["robust_accuracy_20_std"] == pytest.approx(0.1)
    md = leaderboard.render(board)
    assert "0.900 ± 0.100" in md  # clean accuracy
    assert "0.667 ± 0.208" in md  # robust accuracy at 10
    assert "12.00 ± 2.00" in md  # median minimal distance
    assert "3 (0, 1, 2)" in md and "analytic, pgd" in md


def test_one_seed_has_no_std_and_missing_values_are_na() -> None:
    rec = make_record(fa=None, dist=None)
    table = leaderboard.build([rec]).tables[0]
    assert math.isnan(table.stat(0, "clean_accuracy")[1])
    assert math.isnan(table.stat(0, "fa_score")[0])
    md = leaderboard.render(leaderboard.build([rec]))
    (row_line,) = [line for line in md.splitlines() if line.startswith("| binary")]
    cells = [c.strip() for c in row_line.strip("|").split("|")]
    assert cells[:3] == ["binary", "1 (0)", "1.000"]
    assert "±" not in row_line and cells[-7:-5] == ["n/a", "n/a"] and cells[-5] == "yes" and cells[-3] == "no"
    (row,) = leaderboard.rows(leaderboard.build([rec]))
    assert row["clean_accuracy_std"] is None and row["fa_score_mean"] is None


def test_only_records_sharing_the_config_except_seed_are_aggregated() -> None:
    records = three_seeds() + [make_record(seed=0, lr=0.01, clean=0.5), make_record(recipe="fine", seed=4)]
    board = leaderboard.build(records)
    (table,) = board.tables
    assert [(g.recipe, g.seeds) for g in table.groups][2] == ("fine", (4,))
    binary = [g for g in table.groups if g.recipe == "binary"]
    assert sorted(len(g.seeds) for g in binary) == [1, 3]
    # The config id is the key of the configuration without the seed: same for every seed.
    assert len({leaderboard.group_key(r) for r in three_seeds()}) == 1
    assert binary[0].config_id != binary[1].config_id


def test_duplicate_copies_of_a_record_count_once(tmp_path: Path) -> None:
    for rec in three_seeds():
        write_record(rec, tmp_path / "a")
        write_record(rec, tmp_path / "b")
    board = leaderboard.load(tmp_path)
    assert board.tables[0].groups[0].seeds == (0, 1, 2)


def test_ordering_is_deterministic(tmp_path: Path) -> None:
    records = three_seeds() + [make_record(task="mnist", recipe=r, seed=s) for r in ("robust", "fine", "binary")
                               for s in (1, 0)] + [make_record(recipe="binary-adam", source="example-plugin")]
    outputs = set()
    for i in range(3):
        shuffled = copy.deepcopy(records)
        random.Random(i).shuffle(shuffled)
        for rec in shuffled:
            write_record(rec, tmp_path / f"run{i}" / f"dir{random.Random(i).randint(0, 9)}")
        board = leaderboard.load(tmp_path / f"run{i}")
        outputs.add(tuple(leaderboard.render(board, fmt=f) for f in leaderboard.FORMATS))
    assert len(outputs) == 1
    board = leaderboard.build(records)
    assert [t.task for t in board.tables] == ["mnist", "synthetic"]
    assert [g.recipe for g in board.tables[0].groups] == ["binary", "fine", "robust"]
    assert [g.recipe for g in board.tables[1].groups] == ["binary", "binary-adam"]
    assert "binary-adam (example-plugin)" in leaderboard.render(board)


def test_data_subset_is_marked() -> None:
    board = leaderboard.build([make_record(task="cifar", subset=True), make_record(task="synthetic")])
    md = leaderboard.render(board)
    cifar, synthetic = md.split("## cifar")[1].split("## synthetic")
    assert "**Data subset:**" in cifar and "**subset** (100 train / 100 test)" in cifar
    assert "subset" not in synthetic
    data = json.loads(leaderboard.render(board, fmt="json"))
    assert [r["data_subset"] for t in data["tasks"] for r in t["rows"]] == [True, False]


def test_csv_and_json_hold_numbers() -> None:
    board = leaderboard.build(three_seeds() + [make_record(recipe="fine")])
    frame = pd.read_csv(io.StringIO(leaderboard.render(board, fmt="csv")))
    assert list(frame["recipe"]) == ["binary", "fine"]
    assert frame.loc[0, "clean_accuracy_mean"] == pytest.approx(0.9)
    assert frame.loc[0, "robust_accuracy_10_std"] == pytest.approx(statistics.stdev([0.5, 0.6, 0.9]), abs=1e-6)
    assert frame.loc[0, "seeds"] == "0;1;2" and frame.loc[0, "attacks"] == "analytic;pgd"
    data = json.loads(leaderboard.render(board, fmt="json"))
    assert data["tasks"][0]["headline_radii"] == [10.0, 20.0]
    assert data["tasks"][0]["rows"][0]["median_min_distance_std"] == pytest.approx(2.0)


def test_cli_leaderboard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for rec in three_seeds():
        write_record(rec, tmp_path / "res")
    out = io.StringIO()
    assert main(["leaderboard", "--results", str(tmp_path / "res"), "--format", "csv"], out=out) == 0
    assert out.getvalue().startswith("task,recipe,")
    out = io.StringIO()
    assert main(["leaderboard", "--results", str(tmp_path / "res"), "--out", str(tmp_path / "lb")], out=out) == 0
    names = sorted(p.relative_to(tmp_path / "lb").as_posix() for p in (tmp_path / "lb").rglob("*") if p.is_file())
    assert names == ["README.md", "figures/cosine-synthetic-binary.png", "figures/cosine-synthetic-binary.svg",
                     "figures/robust_accuracy.png", "figures/robust_accuracy.svg", "leaderboard.csv",
                     "leaderboard.json"]
    readme = (tmp_path / "lb" / "README.md").read_text()
    assert "![Robust accuracy" in readme and "(figures/robust_accuracy.svg)" in readme
    assert "(figures/cosine-synthetic-binary.svg)" in readme
    # Errors are one line and exit status 2.
    (tmp_path / "empty").mkdir()
    assert main(["leaderboard", "--results", str(tmp_path / "empty")], out=io.StringIO()) == 2
    assert main(["leaderboard", "--results", str(tmp_path / "res"), "--format", "xml"], out=io.StringIO()) == 2
    assert "unknown xml" in capsys.readouterr().err


def test_publish_removes_stale_figures(tmp_path: Path) -> None:
    write_record(make_record(recipe="fine"), tmp_path / "res")
    board = leaderboard.load(tmp_path / "res")
    leaderboard.publish(board, tmp_path / "lb")
    (tmp_path / "lb" / "figures" / "cosine-old.svg").write_text("<svg/>")
    leaderboard.publish(board, tmp_path / "lb")
    assert not (tmp_path / "lb" / "figures" / "cosine-old.svg").exists()


def published_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "records" not in p.relative_to(root).parts}


@pytest.mark.skipif(not (PUBLISHED / "records").is_dir(), reason="no published records in leaderboard/records")
def test_published_leaderboard_regenerates_exactly(tmp_path: Path) -> None:
    """`fabench leaderboard --results leaderboard/records --out leaderboard` is what was committed,
    every record trusted and every audit shown (audits of the old format upgraded first by
    scripts/migrate_audits.py, as the maintainer does: a no-op once they are)."""
    import contextlib
    import warnings

    from _scripts import load_script

    out = tmp_path / "leaderboard"
    shutil.copytree(PUBLISHED / "records", out / "records")
    shutil.copy(PUBLISHED / "sweep.toml", out / "sweep.toml")  # the sweep that produced the records
    with contextlib.redirect_stdout(io.StringIO()) as said:
        assert load_script("migrate_audits").main([str(out / "records")]) == 0, said.getvalue()
    with warnings.catch_warnings():
        warnings.simplefilter("error", leaderboard.RecordWarning)
        assert main(["leaderboard", "--results", str(out / "records"), "--out", str(out)], out=io.StringIO()) == 0
    committed, regenerated = published_files(PUBLISHED), published_files(out)
    assert sorted(committed) == sorted(regenerated)
    differing = [name for name in committed if committed[name] != regenerated[name]]
    assert not differing, f"leaderboard/ differs from its records in {differing}; run scripts/publish_leaderboard.sh"


def test_readme_results_tables_are_the_published_ones() -> None:
    """README.md's Results tables (between `<!-- results:TASK -->` markers) equal leaderboard/README.md's."""
    from _scripts import load_script

    root = PUBLISHED.parent
    mod = load_script("readme_results")
    readme = (root / "README.md").read_text()
    tables = mod.leaderboard_tables((PUBLISHED / "README.md").read_text())
    assert {"synthetic", "mnist5v5", "cifar5v5", leaderboard.AUDIT_SECTION} <= set(tables)
    assert readme.count("<!-- results:") >= 4 and f"<!-- results:{leaderboard.AUDIT_SECTION} -->" in readme
    _, changed = mod.sync(readme, tables)
    assert not changed, f"README tables differ from leaderboard/README.md for {changed}: python scripts/readme_results.py"


def test_converged_column_marks_a_fixed_step_budget() -> None:
    """'head converged' is yes, or no with the seeds; a fixed budget (no stop_tol) says its T."""
    import dataclasses

    from fabench.leaderboard import Group, _converged_label

    def rec(seed: int, warn: bool, stop_tol: float) -> Record:
        r = make_record(seed=seed)
        cfg = {**r.config, "recipe_params": {**r.config["recipe_params"], "steps": 100, "stop_tol": stop_tol}}
        return dataclasses.replace(r, config=cfg, model_info={"warnings": ["not converged"]} if warn else {})

    def label(*recs: Record) -> str:
        return _converged_label(Group("synthetic", "binary", "c", tuple(recs)))

    assert label(rec(0, False, 0.0), rec(1, False, 0.0)) == "yes"
    assert label(rec(0, True, 0.0), rec(1, False, 0.0)) == "**no** (1/2 seeds; fixed T=100)"
    assert label(rec(0, True, 0.001), rec(1, True, 0.001)) == "**no** (2/2 seeds)"


# -- integrity: identities, impossible numbers, conflicts, audits ------------------------------
FULL_SUITE = ("fab", "cw", "apgd", "square", "surrogate")
"""The strong attacks a full audit of a record that ran ``exact`` itself runs (exact: skipped)."""
ALREADY_RUN = "already run by the record's protocol with the same parameters"  # fabench.audit.SKIP_ALREADY_RUN
INAPPLICABLE = "inapplicable: exact solves only two-layer heads on the input (at most 16 units)"
STRONG = ("apgd", "fab", "square", "cw", "surrogate", "exact")


def write_audit_json(rec: Record, path: Path, *, gap: float = 0.0, ran: tuple[str, ...] = FULL_SUITE,
                     skipped: dict[str, str] | None = None, modified: tuple[str, ...] = (),
                     reproduced: bool = True) -> dict[str, Any]:
    """Write ``<record>.audit`` for ``rec`` (at ``path``) as ``fabench audit`` does, by hand: the
    strong worst case ``gap`` below the record at every radius."""
    from fabench import audit

    curve = {radius_key(r): float(v) for r, v in rec.robust_curve().items()}
    strong = {r: max(0.0, v - gap) for r, v in curve.items()}
    skips = {"exact": ALREADY_RUN} if skipped is None else skipped
    obj = {"format": 2, "record_key": rec.key, "record_digest": audit.record_digest(rec), "n_eval": rec.n_eval,
           "radii": rec.radii, "record": curve, "protocol": curve if reproduced else {r: 0.0 for r in curve},
           "reproduced": reproduced, "max_difference": 0.0 if reproduced else max(curve.values()),
           "strong": {"worst": strong}, "gaps": {r: round(curve[r] - strong[r], 6) for r in curve},
           "max_gap": gap,
           "suite": {"ran": list(ran), "skipped": {**{n: "not requested (--strong)" for n in STRONG if n not in ran},
                                 **skips},
                     "modified": list(modified)},
           "config": {}}
    path.with_name(path.stem + ".audit").write_text(json.dumps(obj))
    return obj


def edit_record(path: Path, change: Any) -> None:
    """Apply ``change`` to the JSON of the record at ``path``, in place."""
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def audit_cell(md: str) -> str:
    (line,) = [line for line in md.splitlines() if line.startswith("| binary")]
    headers = [c.strip() for c in md.splitlines()[md.splitlines().index(line) - 2].strip("|").split("|")]
    return [c.strip() for c in line.strip("|").split("|")][headers.index("audit gap")]


def test_a_record_whose_key_or_file_name_does_not_match_is_left_out(tmp_path: Path) -> None:
    """The key must be the configuration's key, and the file named as records.record_path names it."""
    res = tmp_path / "res"
    paths = [write_record(rec, res) for rec in three_seeds()]
    # seed 1's configuration edited by hand (another learning rate), its key left as it was
    edit_record(paths[1], lambda o: o["config"]["recipe_params"].update(lr=0.5))
    with pytest.warns(leaderboard.RecordWarning) as caught:
        board = leaderboard.load(res)
    assert board.tables[0].groups[0].seeds == (0, 2)
    assert [str(w.message) for w in caught] == [
        f"fabench: skipping {str(paths[1])!r}: its key {paths[1].stem[6:]} is not the key of its configuration "
        f"({config_key(read_record(paths[1]).config)[:16]})"]
    # relabelled outside the configuration: the record's recipe is no longer its configuration's
    edit_record(paths[1], lambda o: o["config"]["recipe_params"].update(lr=0.001))
    edit_record(paths[2], lambda o: o.update(recipe="fine"))
    with pytest.warns(leaderboard.RecordWarning, match="its recipe 'fine' is not its configuration's"):
        board = leaderboard.load(res)
    assert [(g.recipe, g.seeds) for g in board.tables[0].groups] == [("binary", (0, 1))]
    edit_record(paths[2], lambda o: o.update(recipe="binary"))
    # a genuine record moved to another recipe's folder, or renamed to another seed
    shutil.copytree(res / "synthetic" / "binary", res / "synthetic" / "fine")
    paths[0].rename(paths[0].with_name(paths[0].name.replace("seed0", "seed7")))
    with pytest.warns(leaderboard.RecordWarning) as caught:
        board = leaderboard.load(res)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 4
    assert all("its file is not named after its task, recipe, seed and key" in m for m in messages)
    assert [(g.recipe, g.seeds) for g in board.tables[0].groups] == [("binary", (1, 2))]


def read_record(path: Path) -> Record:
    from fabench.records import read_record as read

    return read(path)


def test_record_digest_covers_the_identity_not_the_volatile_fields() -> None:
    """A published record: timings, timestamps, runtime, platform, provenance and cache
    information do not change its digest; a relabelled configuration or other numbers do."""
    from fabench.audit import record_digest

    found = sorted((PUBLISHED / "records" / "cifar5v5" / "fine").glob("seed0-*.json"))
    if not found:
        pytest.skip("no published records in leaderboard/records")
    base = json.loads(found[0].read_text())
    digest = record_digest(Record.from_json(base))

    def changed(change: Any) -> str:
        obj = copy.deepcopy(base)
        change(obj)
        return record_digest(Record.from_json(obj))

    volatile = [
        lambda o: o["timings"].update({"train": 99.0}), lambda o: o.update(created="2000-01-01T00:00:00+00:00"),
        lambda o: o["runtime"].update(device="cuda", batch_size=7), lambda o: o["versions"].update(platform="other"),
        lambda o: o.update(provenance={"fabench": {"version": "0.2", "code": "0"}}),
        lambda o: o["feature_space"]["timings"].update({"attack pgd": 1.0}),
        lambda o: o["data_info"].update(data_dir="/elsewhere"),
        lambda o: o["model_info"]["backbone"].update(path="/elsewhere.pt", cache="miss", features_cache="miss"),
    ]
    assert all(changed(c) == digest for c in volatile)
    identity = [
        lambda o: o["config"].update(recipe="binary"), lambda o: o.update(recipe="binary"),
        lambda o: o["config"]["task_params"].update(n_test=10), lambda o: o["config"].update(seed=5),
        lambda o: o["config"]["attacks"].update(fab={}), lambda o: o["config"]["attacks"]["pgd"].update(steps=5),
        lambda o: o["config"].update(radii=[0.0]), lambda o: o["config"].update(n_eval=10),
        lambda o: o["config"].update(protocol="fast"), lambda o: o.update(key="0" * 64),
        lambda o: o["robust_accuracy"]["worst"].update({"0.16": 0.9}), lambda o: o.update(fa_score=0.5),
        lambda o: o["data_info"].update(n_train=10), lambda o: o["model_info"]["backbone"].update(test_accuracy=0.5),
        lambda o: o["model_info"]["training"].update(steps=1),
    ]
    digests = [changed(c) for c in identity]
    assert digest not in digests and len(set(digests)) == len(digests)
    from fabench.audit import VOLATILE_FIELDS

    assert {"timings", "created", "runtime", "provenance", "versions.platform"} <= set(VOLATILE_FIELDS)


@pytest.mark.parametrize("relabel", ["recipe", "task parameter", "attacks"])
def test_a_relabelled_record_loses_its_audit(tmp_path: Path, relabel: str) -> None:
    """A record relabelled by hand (its key recomputed and its file renamed, so that it is
    consistent) with its audit copied along (the audit's key edited to match) is not audited."""
    res = tmp_path / "res"
    rec = make_record(attacks=("analytic", "pgd", "exact"))
    path = write_record(rec, res)
    audit = write_audit_json(rec, path)
    assert audit_cell(leaderboard.render(leaderboard.load(res))) == "0.000 (1/1)"
    obj = rec.to_json()
    if relabel == "recipe":
        obj["recipe"] = obj["config"]["recipe"] = "fine"
        obj["config"]["recipe_params"] = full_params("recipes", "fine", obj["config"]["recipe_params"])
    elif relabel == "task parameter":
        obj["config"]["task_params"]["d"] = 32
    else:
        obj["config"]["attacks"]["fab"] = full_params("attacks", "fab", {})
        obj["config"]["sources"]["attack fab"] = "fabench"
        obj["attacks"].append("fab")
        obj["robust_accuracy"]["fab"] = dict(obj["robust_accuracy"]["worst"])
    obj["key"] = config_key(obj["config"])
    fake = Record.from_json(obj)
    path.unlink()
    path.with_name(path.stem + ".audit").unlink()
    new_path = write_record(fake, res)
    new_path.with_name(new_path.stem + ".audit").write_text(json.dumps({**audit, "record_key": fake.key}))
    with pytest.warns(leaderboard.RecordWarning, match="is not an audit of this record"):
        md = leaderboard.render(leaderboard.load(res))
    (line,) = [line for line in md.splitlines() if line.startswith("| fine" if relabel == "recipe" else "| binary")]
    assert "(1/1)" not in line and "| no " in line


def test_partial_and_unreproduced_audits_are_shown_as_such(tmp_path: Path) -> None:
    """Only audits that ran the full strong suite (exact may be skipped as already run or
    inapplicable) and reproduced the record count as audited; the others are shown distinctly."""
    from fabench import audit

    res = tmp_path / "res"
    recs = [make_record(seed=s, attacks=("analytic", "pgd", "exact")) for s in range(4)]
    paths = [write_record(rec, res) for rec in recs]
    write_audit_json(recs[0], paths[0], gap=0.02)  # full: exact already run by the record
    write_audit_json(recs[1], paths[1], ran=FULL_SUITE, skipped={"exact": INAPPLICABLE})  # full
    assert audit_cell(leaderboard.render(leaderboard.load(res))) == "0.020 (2/4)"
    write_audit_json(recs[2], paths[2], gap=0.05, ran=("pairwise",))  # `fabench audit --strong pairwise`
    assert audit_cell(leaderboard.render(leaderboard.load(res))) == "0.020 (2/4); 0.050 (partial, 1/4)"
    write_audit_json(recs[2], paths[2], ran=FULL_SUITE, modified=("apgd",))  # --strong-set apgd.steps=1
    assert audit_cell(leaderboard.render(leaderboard.load(res))) == "0.020 (2/4); 0.000 (partial, 1/4)"
    write_audit_json(recs[3], paths[3], reproduced=False)
    assert audit_cell(leaderboard.render(leaderboard.load(res))) == \
        "0.020 (2/4); 0.000 (partial, 1/4); **not reproduced** (1/4)"
    assert (ALREADY_RUN, INAPPLICABLE) == (audit.SKIP_ALREADY_RUN, audit.SKIP_INAPPLICABLE)
    assert STRONG == audit.STRONG_ATTACKS
    assert audit.is_full_suite({"ran": list(FULL_SUITE), "skipped": {"exact": audit.SKIP_ALREADY_RUN}, "modified": []})
    assert audit.is_full_suite({"ran": list(audit.STRONG_ATTACKS), "skipped": {}, "modified": []})
    for suite in ({"ran": ["fab", "cw", "square", "surrogate", "exact"], "skipped": {"apgd": audit.SKIP_INAPPLICABLE},
                   "modified": []},
                  {"ran": list(FULL_SUITE), "skipped": {"exact": audit.SKIP_NOT_REQUESTED}, "modified": []},
                  {"ran": list(audit.STRONG_ATTACKS), "skipped": {}, "modified": ["cw"]},
                  {"ran": list(audit.STRONG_ATTACKS)}, {}):
        assert not audit.is_full_suite(suite)


MALFORMED_AUDITS = {
    "max_gap not a number": (lambda a: a.update(max_gap="x"), "max_gap 'x' is not the largest of its gaps"),
    "max_gap not the largest gap": (lambda a: a.update(max_gap=0.0), "max_gap 0.0 is not the largest of its gaps"),
    "gap out of range": (lambda a: a["gaps"].update({"10": 1.5}), "a gap is not a number in [0, 1]"),
    "gap not a number": (lambda a: a["gaps"].update({"10": "0.1"}), "a gap is not a number in [0, 1]"),
    "a radius missing": (lambda a: a["gaps"].pop("10"), "its gaps are not one per radius of the record"),
    "n_eval not an integer": (lambda a: a.update(n_eval="many"), "n_eval 'many' is not a positive integer"),
    "reproduced not a boolean": (lambda a: a.update(reproduced="yes"), "reproduced 'yes' is not true or false"),
    "reproduced on other points": (lambda a: a.update(n_eval=7), "a reproduction on 7 points of a record of 100"),
    "suite not a mapping": (lambda a: a.update(suite=["apgd"]), "its suite is not a mapping"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_AUDITS))
def test_a_malformed_audit_is_not_shown(tmp_path: Path, case: str) -> None:
    """An audit bound to its record (right key and digest) whose fields are not what `fabench
    audit` writes is left out with one warning naming what is wrong (it crashed the leaderboard:
    `float('x')`), and the row shows no audit."""
    res = tmp_path / "res"
    rec = make_record(attacks=("analytic", "pgd", "exact"))
    path = write_record(rec, res)
    obj = write_audit_json(rec, path, gap=0.02)
    change, why = MALFORMED_AUDITS[case]
    change(obj)
    path.with_name(path.stem + ".audit").write_text(json.dumps(obj))
    with pytest.warns(leaderboard.RecordWarning, match=re.escape(f"is not a well-formed audit ({why})")):
        md = leaderboard.render(leaderboard.load(res))
    assert audit_cell(md) == "no" and leaderboard.AUDIT_SECTION not in md


def test_the_audit_table_shows_every_seed_with_its_points_and_radius(tmp_path: Path) -> None:
    """The page's last table gives each record's audit, seed by seed in seed order: the largest gap
    with its points and smallest radius, `-` without an audit, *partial* and **not reproduced**
    marked; JSON and CSV carry the full audits' gaps per seed (None / empty otherwise). Without any
    audit the page has no such table."""
    res = tmp_path / "res"
    recs = [make_record(seed=s, attacks=("analytic", "pgd", "exact")) for s in range(4)]
    paths = [write_record(rec, res) for rec in reversed(recs)][::-1]  # written out of seed order
    md = leaderboard.render(leaderboard.load(res))
    assert leaderboard.AUDIT_SECTION not in md and "audit_max_gap" in leaderboard.render(leaderboard.load(res), fmt="csv")
    write_audit_json(recs[0], paths[0], gap=0.02)
    obj = write_audit_json(recs[2], paths[2], gap=0.05, ran=("pairwise",))
    write_audit_json(recs[3], paths[3], reproduced=False)
    obj["gaps"] = {"0": 0.0, "10": 0.05, "20": 0.05}  # the largest gap first reached at 10
    paths[2].with_name(paths[2].stem + ".audit").write_text(json.dumps(obj))
    board = leaderboard.load(res)
    md = leaderboard.render(board)
    section = md[md.index(f"## {leaderboard.AUDIT_SECTION}"):]
    (row,) = [ln for ln in section.splitlines() if ln.startswith("| `synthetic`")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == ["binary", f"`{board.groups[0].config_id}`", "0, 1, 2, 3"]
    assert cells[4] == "0.020 (2 of 100 at ε=0) / - / 0.050 (5 of 100 at ε=10) (partial) / **not reproduced**"
    (jrow,) = json.loads(leaderboard.render(board, fmt="json"))["tasks"][0]["rows"]
    assert jrow["audit_max_gap"] == [0.02, None, None, None]
    csv = leaderboard.render(board, fmt="csv").splitlines()
    assert csv[1].split(",")[csv[0].split(",").index("audit_max_gap")] == "0.02;;;"


def test_the_training_table_shows_every_seed_of_every_trained_head() -> None:
    """The page's training table gives each trained head's report seed by seed, in seed order
    (a missing entry `-`, a verdict of not converged in bold); groups without a report (a
    handcrafted head) have no row, and a page without any has no such table."""
    recs = three_seeds()
    reports = [{"steps": 250, "final_loss": 0.0194, "train_accuracy": 0.99451, "probe_accuracy": 0.9938,
                "late_decrease": 0.0012, "converged": True},
               {"steps": 100, "final_loss": 0.169, "train_accuracy": 1.0, "probe_accuracy": None,
                "late_decrease": 0.0277, "converged": False},
               {"steps": 5, "final_loss": "junk", "train_accuracy": 0.5, "converged": True}]
    for rec, report in zip(reversed(recs), reversed(reports)):  # out of seed order
        rec.model_info = {"training": report}
    robust = make_record(recipe="robust", seed=0)
    md = leaderboard.render(leaderboard.build([*recs, robust]))
    section = md[md.index(f"## {leaderboard.TRAINING_SECTION}"):]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `synthetic`")]
    assert len(rows) == 1  # robust has no training report
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1:] == ["binary", "0, 1, 2", "0.800 / 0.900 / 1.000 (100)", "0.9938 / - / -",
                         "0.019 / 0.169 / n/a", "0.9945 / 1.0000 / 0.5000", "250 / 100 / 5",
                         "0.1% / 2.8% / -", "yes / **no** / yes"]
    assert leaderboard.TRAINING_SECTION not in leaderboard.render(leaderboard.build([robust]))


def test_largest_gap_radius_is_the_smallest_radius_of_the_largest_gap() -> None:
    assert leaderboard.largest_gap_radius({"0": 0.0, "1.5": 0.02, "0.5": 0.02, "1": 0.01}) == 0.5
    assert leaderboard.largest_gap_radius({"0": 0.0, "1": 0.0}) is None  # no gap: no radius
    for junk in (None, [0.1], {"x": 0.1, "1": "0.2", "2": float("nan"), "inf": 0.3, "3": True}):
        assert leaderboard.largest_gap_radius(junk) is None


def test_conflicting_copies_of_a_record_are_both_left_out(tmp_path: Path) -> None:
    """A copy of seed 1 elsewhere with the same configuration but other numbers: one warning, and
    neither copy is shown (nor the genuine one's audit); copies that differ only in volatile
    fields are one record, shown with the audit of either."""
    res = tmp_path / "res"
    recs = three_seeds()
    genuine = write_record(recs[1], res / "a")
    for rec in (recs[0], recs[2]):
        write_record(rec, res / "a")
    write_audit_json(recs[1], genuine)
    forged = copy.deepcopy(recs[1])
    forged.robust_accuracy = {a: {**c, "10": 0.7} for a, c in forged.robust_accuracy.items()}
    copy_path = write_record(forged, res / "b")
    with pytest.warns(leaderboard.RecordWarning) as caught:
        board = leaderboard.load(res)
    assert [str(w.message) for w in caught] == [
        f"fabench: skipping 2 records of synthetic/binary seed 1 (key {recs[1].key[:16]}) that disagree: "
        f"{str(genuine)!r}, {str(copy_path)!r}; keep only the genuine one"]
    assert board.tables[0].groups[0].seeds == (0, 2)
    assert audit_cell(leaderboard.render(board)) == "no"
    later = copy.deepcopy(recs[1])
    later.timings, later.created = {"train": 3.0}, "2030-01-01T00:00:00+00:00"
    write_record(later, res / "b")  # the same record, recomputed: its audit is in a/
    board = leaderboard.load(res)
    assert board.tables[0].groups[0].seeds == (0, 1, 2)
    assert audit_cell(leaderboard.render(board)) == "0.000 (1/3)"


def _set_curve(name: str, radius: str, value: Any) -> Any:
    return lambda o: o["robust_accuracy"][name].update({radius: value})


def _set_all(radius: str, value: Any) -> Any:
    return lambda o: [c.update({radius: value}) for c in o["robust_accuracy"].values()]


IMPOSSIBLE = {
    "robust above clean": (lambda o: o.update(clean_accuracy=0.85), "at r=0 (1) is above the clean accuracy (0.85)"),
    "worst above an attack's curve": (_set_curve("pgd", "10", 0.7), "worst case at r=10 (0.9) is above pgd's curve"),
    "rising with the radius": (_set_all("20", 0.95), "rises with the radius"),
    "negative": (_set_all("20", -0.1), "not a number in [0, 1]"),
    "NaN": (_set_all("20", math.nan), "robust accuracy of analytic at r=20 is nan"),
    "missing": (lambda o: o["robust_accuracy"]["worst"].pop("20"), "worst at r=20 is None"),
    "clean accuracy above 1": (lambda o: o.update(clean_accuracy=1.5), "clean accuracy 1.5"),
    "no curve of an attack": (lambda o: o["robust_accuracy"].pop("pgd"), "attacks pgd have no robust accuracy"),
    "worst below what the attacks can break": (
        lambda o: [_set_curve("analytic", "10", 0.98)(o), _set_curve("pgd", "10", 0.98)(o)],
        "below what all the attacks together can have broken"),
    "median distance above a radius where most points are broken": (
        lambda o: o.update(median_min_distance=25.0), "only 0.1 of the points are unbroken at r=20"),
    "certified above the worst case": (
        lambda o: o.update(certified={"space": "input", "robust_accuracy": {"0": 1.0, "10": 0.95, "20": 0.1}}),
        "certified robust accuracy at r=10"),
}


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE))
def test_impossible_records_are_left_out(tmp_path: Path, case: str) -> None:
    change, message = IMPOSSIBLE[case]
    res = tmp_path / "res"
    write_record(make_record(seed=1), res)
    bad = write_record(make_record(seed=0), res)
    obj = json.loads(bad.read_text())
    change(obj)
    bad.write_text(json.dumps(obj))  # NaN as the JSON extension NaN
    with pytest.warns(leaderboard.RecordWarning) as caught:
        board = leaderboard.load(res)
    (warning,) = [str(w.message) for w in caught]
    assert warning.startswith(f"fabench: skipping {str(bad)!r}: ") and message in warning
    assert board.tables[0].groups[0].seeds == (1,)


def test_fast_mode_curves_are_cumulative(tmp_path: Path) -> None:
    """In ``fast`` mode each attack's curve is the worst case so far: the lowest is the worst case.
    The same numbers in ``full`` mode (attacks' own curves) are possible."""
    res = tmp_path / "res"
    for mode in ("full", "fast"):
        rec = make_record(seed=0 if mode == "full" else 1)
        rec.config["protocol"] = mode
        rec.key = config_key(rec.config)
        rec.robust_accuracy["analytic"]["10"], rec.robust_accuracy["pgd"]["10"] = 0.95, 0.92
        write_record(rec, res)
    with pytest.warns(leaderboard.RecordWarning) as caught:
        board = leaderboard.load(res)
    (warning,) = [str(w.message) for w in caught]
    assert "seed1-" in warning and "not the lowest of the fast mode's cumulative curves" in warning
    assert [g.seeds for g in board.tables[0].groups] == [(0,)]


#: Records the leaderboard used to crash on, show, or average in; each is one warning now.
#: name -> (change to the JSON of a seed-0 record, words of the warning). The key is recomputed
#: and the file named after it, so only the change itself can be what is refused.
MALFORMED = {
    "flags-int": (_set("flags", 5), "'flags' is not a JSON object"),
    "model-info-list": (_set("model_info", [1]), "'model_info' is not a JSON object"),
    "task-params-list": (_set("config.task_params", [1]), "task_params is not a JSON object"),
    "recipe-params-list": (_set("config.recipe_params", [1]), "recipe_params is not a JSON object"),
    "config-attacks-list": (_set("config.attacks", ["analytic", "pgd"]), "attacks is not a JSON object"),
    "headline-missing": (_set("headline_radii", KeyError), "missing headline_radii"),
    "headline-not-a-radius": (_set("headline_radii", [55.0]), "headline radii [55.0] are not among its radii"),
    "headline-strings": (_set("headline_radii", ["x"]), "are not among its radii"),
    "fa-nan": (_set("fa_score", math.nan), "feature-averaging score nan"),
    "fa-inf": (_set("fa_score", math.inf), "feature-averaging score inf"),
    "radius-missing": (_set("robust_accuracy.worst.20", KeyError), "at r=20 is None"),
    "radius-extra": (_set("robust_accuracy.worst.99", 0.5), "radii 99 that are not among its radii"),
    "median-far": (_set("median_min_distance", "far"), "median minimal distance 'far'"),
    "median-distance-nan": (_set("median_distance.worst", math.nan), "median distance of worst is nan"),
    "seed-negative": (lambda o: (_set("seed", -1)(o), _set("config.seed", -1)(o)), "seed -1 is not an integer in"),
    "seed-huge": (lambda o: (_set("seed", 10**30)(o), _set("config.seed", 10**30)(o)), "is not an integer in"),
    "n-eval-zero": (_set("n_eval", 0), "n_eval 0 is not a positive number"),
    "n-eval-above-test-set": (_set("n_eval", 101), "more than its test set's 100"),
    "cosine-ragged": (_set("cosine_matrix.values", [[0.1, 0.2], [0.3]]), "rows are of different lengths"),
    "cosine-units-int": (_set("cosine_matrix.units", 5), "units are not a list"),
    "schema-in-config": (_set("config.schema", 99), "configuration is of schema 99"),
    "protocol-list": (_set("config.protocol", [1]), "protocol [1] is not one of"),
    "created-int": (_set("created", 5), "created timestamp is not text"),
    # configuration values evaluate never writes (before: shown, plotted; the audit an internal KeyError)
    "config-seed-missing": (_set("config.seed", KeyError), "configuration's seed None is not an integer in"),
    "protocol-missing": (_set("config.protocol", KeyError), "protocol None is not one of"),
    "sources-missing": (_set("config.sources", KeyError), "sources None do not name the provider"),
    "sources-empty": (_set("config.sources", {}), "sources {} do not name the provider"),
    "sources-no-attack": (_set("config.sources.attack pgd", KeyError), "do not name the provider of each"),
    "radii-negative": (_set("config.radii", [-1.0, 0.0, 10.0, 20.0]), "radii must be finite, non-negative"),
    "task-param-text": (_set("config.task_params.d", "x"), "cannot read task synthetic.d='x': expected int"),
    "task-param-as-text": (_set("config.task_params.d", "64"), "has d='64', not a value evaluate writes (64)"),
    "task-param-missing": (_set("config.task_params.sigma", KeyError), "task synthetic has no 'sigma'"),
    "recipe-param-out-of-range": (_set("config.recipe_params.m", -1), "binary: m=-1 is outside its range"),
    "recipe-param-null": (_set("config.recipe_params.lr", None), "binary.lr: expected float, got None"),
    "recipe-param-unknown": (_set("config.recipe_params.zzz", 1), "binary has no parameter 'zzz'"),
    "attack-param-bool": (_set("config.attacks.pgd.steps", True), "pgd.steps: expected int, got True"),
    "attack-param-huge-int": (_set("config.attacks.analytic.max_radius", 10**400), "too large for a float"),
    "attack-param-choice": (_set("config.attacks.pgd.search", "zzz"), "search"),
}


def _write_mutated(res: Path, change: Any) -> Path:
    """A seed-0 record changed by ``change``, its key recomputed, its file named after it."""
    good = write_record(make_record(seed=0), res)
    obj = json.loads(good.read_text())
    change(obj)
    if isinstance(obj.get("config"), dict):
        obj["key"] = config_key(obj["config"])
    seed = obj.get("seed")
    path = good.with_name(f"seed{seed}-{str(obj.get('key'))[:16]}.json")
    good.unlink()
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_records_are_left_out_with_one_warning(tmp_path: Path, case: str, capsys) -> None:
    """A malformed record among good ones: one warning line naming it and why, the rest rendered
    (before: an internal error that aborted the whole leaderboard, or the record shown)."""
    change, words = MALFORMED[case]
    res = tmp_path / "res"
    for seed in (1, 2):
        write_record(make_record(seed=seed), res)
    bad = _write_mutated(res, change)
    assert main(["leaderboard", "--results", str(res)]) == 0
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith(f"fabench: warning: skipping {str(bad)!r}") and words in line, line
    assert "| 2 (1, 2) |" in captured.out
    out = tmp_path / "board"
    assert main(["leaderboard", "--results", str(res), "--out", str(out)]) == 0
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert (out / "README.md").is_file() and (out / "figures" / "robust_accuracy.svg").is_file()


def test_a_part_not_registered_here_keeps_its_parameters_unjudged(tmp_path: Path) -> None:
    """The parameters of a part whose provider is not registered here (a plugin not installed)
    cannot be judged: the record is shown as before; the registered parts are still checked."""
    res = tmp_path / "res"
    rec = make_record(source="fabench-other-plugin")
    rec.config["recipe_params"] = {"m": "x", "anything": [1, 2]}
    rec.key = config_key(rec.config)
    write_record(rec, res)
    with warnings.catch_warnings():
        warnings.simplefilter("error", leaderboard.RecordWarning)
        board = leaderboard.load(res)
    assert [g.recipe for g in board.groups] == ["binary"]
    rec.config["task_params"]["d"] = "x"
    rec.key = config_key(rec.config)
    write_record(rec, res)
    with pytest.warns(leaderboard.RecordWarning, match="cannot read task synthetic.d='x'"):
        leaderboard.load(res)


def test_leaderboard_refuses_an_out_inside_its_results(tmp_path: Path, capsys) -> None:
    """``--out`` at or below ``--results`` would write leaderboard.json among the records, read back
    as a broken record by every later run: one error line, nothing written (before: accepted). The
    published layout (the records below --out) and a page without JSON there stay allowed."""
    res = tmp_path / "res"
    write_record(make_record(), res)
    for out in (res, res / "board"):
        assert main(["leaderboard", "--results", str(res), "--out", str(out), "--no-figures"]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"fabench: error: --out {str(out)!r} is inside --results") and "leaderboard.json" in line
    assert not (res / "board").exists() and not (res / "README.md").exists()
    assert main(["leaderboard", "--results", str(res), "--out", str(res), "--no-figures", "--format", "markdown"]) == 0
    assert main(["leaderboard", "--results", str(res), "--out", str(tmp_path), "--no-figures"]) == 0
    capsys.readouterr()
    assert main(["leaderboard", "--results", str(res)]) == 0
    assert capsys.readouterr().err == ""


def test_load_record_refuses_what_json_and_record_cannot_say(tmp_path: Path) -> None:
    """Duplicate JSON keys (which one is meant?), an integer Python will not convert, a missing
    required field: one-line ConfigErrors that name the file (before: read silently, or a
    ValueError/TypeError that escaped the leaderboard)."""
    from fabench.errors import ConfigError

    text = json.dumps(make_record().to_json())
    cases = {
        "dup.json": text[:-1] + ', "clean_accuracy": 0.1}',
        "bigint.json": text.replace('"timings": {', '"timings": {"x": ' + "9" * 5000 + ", ", 1),
        "missing.json": json.dumps({k: v for k, v in make_record().to_json().items() if k != "headline_radii"}),
        "schema.json": json.dumps({**make_record().to_json(), "schema": 99}),
    }
    words = {"dup.json": "'clean_accuracy' is given twice", "bigint.json": "Exceeds the limit",
             "missing.json": "missing headline_radii", "schema.json": "a record of schema 99"}
    for name, body in cases.items():
        path = tmp_path / name
        path.write_text(body)
        with pytest.raises(ConfigError) as err:
            leaderboard.load_record(path)
        assert str(err.value).startswith(repr(str(path))) and words[name] in str(err.value)
        assert "\n" not in str(err.value)
    good = tmp_path / "good.json"
    good.write_text(text)
    assert leaderboard.load_record(good).key == make_record().key


def test_an_audit_summary_stored_in_the_record_is_not_shown(tmp_path: Path) -> None:
    """``flags.audit`` is not digested (it is the leaderboard's in-memory summary): written into the
    record file by hand it must not make an unaudited row look audited."""
    res = tmp_path / "res"
    rec = make_record()
    rec.flags = {"audit": {"max_gap": 0.0, "n_eval": 100, "reproduced": True, "full": True}}
    write_record(rec, res)
    board = leaderboard.load(res)
    assert leaderboard.audit_label(board.tables[0].groups[0]) == "no"


def test_parse_formats_refuses_what_would_be_ignored_or_mixed() -> None:
    from fabench.errors import ConfigError

    assert leaderboard.parse_formats(None, to_files=False) == ["markdown"]
    assert leaderboard.parse_formats(None, to_files=True) == list(leaderboard.FORMATS)
    assert leaderboard.parse_formats("csv,json", to_files=True) == ["csv", "json"]
    assert leaderboard.parse_formats("csv,csv", to_files=False) == ["csv"]
    for text, to_files, words in ((",", True, "names no format"), ("csv,json", False, "several formats need --out"),
                                  ("xml", True, "unknown xml")):
        with pytest.raises(ConfigError, match=words):
            leaderboard.parse_formats(text, to_files=to_files)


def test_a_failed_figure_leaves_the_published_figures_as_they_were(tmp_path: Path, monkeypatch) -> None:
    """The figures are drawn into a hidden directory and moved in only when all are drawn: a
    failure half-way leaves ``figures/`` as it was and no staging directory behind."""
    from fabench import plots

    board = leaderboard.build(three_seeds())
    out = tmp_path / "board"
    leaderboard.publish(board, out)
    before = {p.name: p.read_bytes() for p in (out / "figures").iterdir()}

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(plots, "cosine_figure", boom)
    with pytest.raises(RuntimeError):
        leaderboard.publish(leaderboard.build(three_seeds()[:2]), out)
    assert {p.name: p.read_bytes() for p in (out / "figures").iterdir()} == before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        leaderboard.publish(board, fresh, formats=())
    assert not (fresh / "figures").exists() and list(fresh.iterdir()) == []
