"""``fabench audit``: rebuilds a record's model, runs the strong suite, writes <record>.audit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from fabench import leaderboard
from fabench.cli import main
from fabench.records import RecordWarning, config_key, radius_key, read_record

SMALL = ["--task", "synthetic", "--recipe", "binary", "--set", "d=60", "--set", "n_train=60",
         "--set", "n_test=30", "--set", "recipe.steps=60", "--epsilons", "0:8:1"]
PUBLISHED = Path(__file__).resolve().parents[1] / "leaderboard" / "records"


def small_record(out: Path) -> Path:
    """A finished record of the small synthetic configuration below ``out`` (a weak protocol)."""
    assert main(["evaluate", *SMALL, "--out", str(out), "-q", "--attacks", "analytic,pgd",
                 "--set", "pgd.steps=3"]) == 0
    (record,) = [p for p in out.rglob("*.json")]
    return record


def test_audit_writes_a_keyed_result_that_the_leaderboard_shows(tmp_path: Path, capsys) -> None:
    out = tmp_path / "results"
    record = small_record(out)
    capsys.readouterr()
    assert main(["audit", str(record), "--n-eval", "0", "--strong", "apgd,exact", "-q",
                 "--strong-set", "apgd.steps=10", "--strong-set", "apgd.restarts=1"]) == 0
    text = capsys.readouterr().out
    audit_file = record.with_name(record.stem + ".audit")
    result = json.loads(audit_file.read_text())
    rec = json.loads(record.read_text())
    assert result["record_key"] == rec["key"] and result["n_eval"] == rec["n_eval"] == 30
    # the re-run reproduces the record; the gaps are taken from the record's own numbers
    worst = rec["robust_accuracy"]["worst"]
    assert result["record"] == worst and result["protocol"] == worst
    assert result["reproduced"] is True and result["max_difference"] == 0.0
    assert "the re-run reproduced the record's numbers" in text
    assert result["gaps"] == {r: round(max(0.0, worst[r] - result["strong"]["worst"][r]), 6) for r in worst}
    # exact is the true minimum of this head: the strong worst case is never above the protocol's
    assert all(g >= 0 for g in result["gaps"].values())
    # a 3-step PGD and the averaged direction miss points that exact breaks somewhere on the grid
    assert result["max_gap"] > 0 and "too high at" in text
    # strong columns are cumulative in run order (exact, a minimisation attack, before apgd): they
    # never increase left to right, and the last one is the strong worst case
    assert list(result["strong"]) == ["exact", "apgd", "worst"]
    for r in result["gaps"]:
        col = [result["strong"][name][r] for name in result["strong"]]
        assert all(a >= b - 1e-12 for a, b in zip(col, col[1:])) and col[-2] == col[-1]
    # two strong attacks, apgd with a smaller budget: a partial audit, and it says so
    assert result["suite"]["ran"] == ["exact", "apgd"] and result["suite"]["modified"] == ["apgd"]
    assert set(result["suite"]["skipped"]) == {"fab", "square", "cw", "surrogate"} and result["suite"]["full"] is False
    assert "a partial audit" in text
    shown = f"{result['max_gap']:.3f} (partial, 1/1)"
    assert shown in leaderboard.render(leaderboard.load(out))
    # the audit is bound to the record, not only its key: a rerun that changes only the timings,
    # provenance, runtime and cache information keeps it; other numbers under the same key drop it
    rec["timings"] = {k: v + 1.0 for k, v in rec["timings"].items()}
    rec["created"], rec["runtime"] = "2000-01-01T00:00:00+00:00", {**rec["runtime"], "threads": 99}
    rec["versions"] = {**rec["versions"], "platform": "another kernel"}
    rec["provenance"] = {"fabench": {"version": "9.9", "code": "another"}}
    if isinstance(rec.get("feature_space"), dict):
        rec["feature_space"]["timings"] = {"attack pgd": 123.0}
    rec["model_info"].setdefault("backbone", {})["features_cache"] = "miss"
    record.write_text(json.dumps(rec))
    assert shown in leaderboard.render(leaderboard.load(out))
    fa = rec["fa_score"]
    rec["fa_score"] = fa - 0.01
    record.write_text(json.dumps(rec))
    with pytest.warns(RecordWarning, match="is not an audit of this record"):
        assert shown not in leaderboard.render(leaderboard.load(out))
    rec["fa_score"] = fa
    record.write_text(json.dumps(rec))
    assert shown in leaderboard.render(leaderboard.load(out))
    # an audit of the old format (gaps against the re-run, no format) is not shown
    legacy = {k: v for k, v in result.items() if k not in ("format", "record", "reproduced", "suite")}
    audit_file.write_text(json.dumps(legacy))
    with pytest.warns(RecordWarning, match="written by an older fabench"):
        assert shown not in leaderboard.render(leaderboard.load(out))
    audit_file.write_text(json.dumps(result))
    # the same record found by configuration instead of by path
    assert main(["audit", *SMALL, "--out", str(out), "--attacks", "analytic,pgd", "--set", "pgd.steps=3",
                 "--n-eval", "10", "--strong", "exact", "-q"]) == 0


def test_audit_checks_the_record_numbers_not_its_rerun(tmp_path: Path, capsys) -> None:
    """A record whose robust accuracies were raised by hand: the audit's gaps are taken from the
    record's numbers (not from its own re-run, which gives the truth back), it says the re-run did
    not reproduce the record, and the leaderboard shows it as such, never as a clean audit."""
    out = tmp_path / "results"
    record = small_record(out)
    rec = json.loads(record.read_text())
    truth = dict(rec["robust_accuracy"]["worst"])
    high = rec["clean_accuracy"]  # every point robust at every radius (as high as a possible record goes)
    assert min(truth.values()) < high - 0.3  # the record is really overstated
    rec["robust_accuracy"] = {a: {r: high for r in curve} for a, curve in rec["robust_accuracy"].items()}
    record.write_text(json.dumps(rec))
    capsys.readouterr()
    assert main(["audit", str(record), "--strong", "exact", "-q"]) == 0
    text = capsys.readouterr().out
    result = json.loads(record.with_name(record.stem + ".audit").read_text())
    strong_worst = result["strong"]["worst"]
    assert result["gaps"] == {r: round(max(0.0, high - strong_worst[r]), 6) for r in truth}
    assert result["max_gap"] >= max(high - v for v in truth.values()) - 1e-6
    assert result["protocol"] == truth and result["record"] == rec["robust_accuracy"]["worst"]
    assert result["reproduced"] is False
    assert result["max_difference"] == pytest.approx(max(high - v for v in truth.values()), abs=1e-6)
    assert "did not reproduce the record's numbers" in text
    assert leaderboard.impossible_numbers(read_record(record)) is None  # a possible record, only a false one
    md = leaderboard.render(leaderboard.load(out))
    assert "**not reproduced** (1/1)" in md
    assert "(1/1)" not in md.replace("**not reproduced** (1/1)", "")


def test_audit_refuses_a_record_whose_key_is_not_its_configurations(tmp_path: Path, capsys) -> None:
    """A record relabelled by hand (another recipe in its configuration, its key kept) is not
    audited: the audit would re-run one configuration and vouch for a key that names another."""
    record = small_record(tmp_path / "results")
    rec = json.loads(record.read_text())
    rec["config"]["recipe_params"]["m"] = 3
    record.write_text(json.dumps(rec))
    capsys.readouterr()
    assert main(["audit", str(record), "--strong", "exact", "-q"]) == 2
    err = capsys.readouterr().err
    assert err == ("fabench: error: audit: the record's key is not the key of its configuration (edited by hand?); "
                   "run fabench evaluate again\n")
    assert not record.with_name(record.stem + ".audit").exists()
    assert config_key(rec["config"]) != rec["key"]


def test_a_subset_audit_does_not_reproduce_the_record(tmp_path: Path) -> None:
    """An audit of a seeded subset ran on other points than the record: it cannot vouch that the
    re-run gave the record's numbers back, even where the curves happen to agree."""
    from fabench import audit

    record = small_record(tmp_path / "results")
    result = audit.audit(read_record(record), n_eval=7, attacks=("exact",))
    assert result.n_eval == 7 and result.reproduced is False
    assert result.suite["ran"] == ["exact"] and result.suite["full"] is False
    # its gaps are against the re-run on the same 7 points, not the record's numbers on other points
    assert result.gaps == audit.gaps_against(result.protocol, result.strong["worst"])
    assert result.record != result.protocol  # (on these points the two curves differ: the test has teeth)
    said = audit.format_audit(result)  # says why, rather than reporting a "difference" between other points
    assert "a --n-eval subset (7 of the record's" in said and "did not reproduce" not in said


def test_strong_breaks_walks_down_only_below_what_is_already_broken() -> None:
    """A fake fixed-radius attack that breaks point i iff the radius is >= t_i: the walk down finds
    every break below the protocol's (and none above), attacking each point only where it is open."""
    import torch

    from fabench.audit import strong_breaks
    from fabench.models import BinaryHead, Classifier
    from fabench.protocol import AttackSpec
    from fabench.types import AttackOutcome

    radii = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    t = torch.tensor([2.5, 0.5, 10.0, 4.0])  # true minimal distances
    seen: list[tuple[int, float]] = []

    class Fake:
        minimization = False

        def run(self, model, x, y, rad, *, data, params, seed):
            i = x[:, 0].long()
            seen.extend((int(v), float(rad[0])) for v in i)
            broken = torch.tensor([float(r) for r in rad])[:, None] >= t[i][None, :]
            return AttackOutcome(tuple(rad), broken, torch.where(broken[0], t[i], torch.tensor(float("inf"))))

    head = BinaryHead(2, 1, init_std=0.0, bias=False)
    with torch.no_grad():
        head.weight[0, 0] = torch.tensor([0.0, 1.0])
        head.weight[1, 0] = torch.tensor([0.0, -1.0])
    model = Classifier(head)
    x = torch.stack([torch.arange(4.0), torch.ones(4)], dim=1)
    y = torch.ones(4, dtype=torch.long)

    class Data:
        bounds = (float("-inf"), float("inf"))

    done = torch.zeros(len(radii), 4, dtype=torch.bool)
    done[5:, 0] = True  # the protocol broke point 0 at 5, point 3 at 4; points 1, 2 unbroken
    done[4:, 3] = True
    found, calls = strong_breaks(model, Data(), AttackSpec("fake", Fake(), {}), x, y, torch.ones(4, dtype=torch.bool),
                                 radii, done, seed=0)
    broken_at = {i: [radii[r] for r in range(len(radii)) if found[r, i]] for i in range(4)}
    assert broken_at == {0: [3.0, 4.0], 1: [1.0, 2.0, 3.0, 4.0, 5.0], 2: [], 3: []}
    # point 0 from 4 down to 2 (fails), point 1 from 5 down to 1 (0 is never attacked), point 2 once
    # at 5, point 3 once at 3 (it fails)
    assert sorted(seen) == sorted([(0, 4.0), (0, 3.0), (0, 2.0), (1, 5.0), (1, 4.0), (1, 3.0), (1, 2.0), (1, 1.0),
                                   (2, 5.0), (3, 3.0)])
    # one call per (round, radius) group: {4, 5, 3}, {3, 4}, {2, 3}, {2}, {1}
    assert calls == 9


#: A published record and its audit as they were before audits had a format (session 15).
FORMAT1 = Path(__file__).resolve().parent / "data" / "audit-format1"


def copy_format1_fixture(root: Path, names: tuple[str, ...]) -> tuple[Path, Path]:
    """``(fixture record, root)``: the format-1 fixture's synthetic fine seed-0 record and audit,
    copied to ``root/<name>/synthetic/fine/`` for each name."""
    (src,) = sorted((FORMAT1 / "synthetic" / "fine").glob("seed0-*.json"))
    for name in names:
        folder = root / name / "synthetic" / "fine"
        folder.mkdir(parents=True)
        shutil.copy(src, folder / src.name)
        shutil.copy(src.with_suffix(".audit"), folder / src.with_suffix(".audit").name)
    return src, root


def test_migrate_audits_upgrades_only_audits_that_still_match(tmp_path: Path, capsys) -> None:
    """scripts/migrate_audits.py: an old audit of its record's numbers is upgraded (the same gaps,
    reproduced, the full suite, the new digest); one of other numbers or another key is refused,
    and left as it was."""
    from _scripts import load_script

    from fabench.audit import AUDIT_FORMAT, SKIP_ALREADY_RUN, read_audit

    mod = load_script("migrate_audits")
    names = ("good", "numbers", "key")
    src, root = copy_format1_fixture(tmp_path / "records", names)
    old = json.loads(src.with_suffix(".audit").read_text())
    assert "format" not in old  # the fixture is of the first format
    numbers = root / "numbers" / "synthetic" / "fine" / src.name
    obj = json.loads(numbers.read_text())
    obj["robust_accuracy"]["worst"]["20"] = 0.9  # edited by hand after the audit
    numbers.write_text(json.dumps(obj))
    key_audit = (root / "key" / "synthetic" / "fine" / src.name).with_suffix(".audit")
    key_audit.write_text(json.dumps({**old, "record_key": "0" * 64}))
    before = {n: (root / n / "synthetic" / "fine" / src.name).with_suffix(".audit").read_text() for n in names}
    assert mod.main([str(root)]) == 1
    said = capsys.readouterr().out.splitlines()
    assert said[-1] == "3 audits: 1 upgraded, rebound or current, 2 refused"
    assert any(line.startswith("upgraded") and "/good/" in line and "reproduced, full suite" in line for line in said)
    assert any(line.startswith("refused") and "/numbers/" in line and "digest does not match" in line for line in said)
    assert any(line.startswith("refused") and "/key/" in line and "an audit of another record" in line for line in said)
    for name in ("numbers", "key"):
        assert (root / name / "synthetic" / "fine" / src.name).with_suffix(".audit").read_text() == before[name]
    good = root / "good" / "synthetic" / "fine" / src.name
    new = read_audit(good, read_record(good))
    assert new is not None and new["format"] == AUDIT_FORMAT
    assert new["gaps"] == old["gaps"] and new["max_gap"] == old["max_gap"] and new["strong"] == old["strong"]
    assert new["reproduced"] is True and new["record"] == json.loads(good.read_text())["robust_accuracy"]["worst"]
    assert old["config"]["skipped"] == ["exact"]
    assert new["suite"]["full"] is True and new["suite"]["skipped"] == {"exact": SKIP_ALREADY_RUN}
    assert mod.main([str(good.with_suffix(".audit"))]) == 0  # already current: nothing to do
    assert capsys.readouterr().out.startswith("current")
    md = leaderboard.render(leaderboard.load(root / "good"))
    assert "| fine " in md and "0.001 (1/1)" in md


def test_migrate_audits_rebinds_only_records_that_verify_more_since(tmp_path: Path, capsys) -> None:
    """scripts/migrate_audits.py: a current audit whose record now verifies more attacks (same
    numbers) is rebound, unchanged but for its digest; a record that verifies more *and* has other
    numbers, or verifies fewer attacks, is refused and its audit left as it was."""
    from _scripts import load_script

    from fabench.audit import read_audit

    mod = load_script("migrate_audits")
    names = ("more", "more_and_numbers", "fewer")
    src, root = copy_format1_fixture(tmp_path / "records", names)
    assert mod.main([str(root)]) == 0  # format 1 -> current, bound to today's records
    capsys.readouterr()
    files = {n: root / n / "synthetic" / "fine" / src.name for n in names}
    audits = {n: json.loads(f.with_suffix(".audit").read_text()) for n, f in files.items()}
    verified = json.loads(src.read_text())["verified_attacks"]
    assert "deepfool" not in verified and len(verified) >= 1
    for name, edit in [("more", lambda o: o.update(verified_attacks=sorted(verified + ["deepfool", "pairwise"]))),
                       ("more_and_numbers", lambda o: (o.update(verified_attacks=sorted(verified + ["deepfool"])),
                                                       o["robust_accuracy"]["worst"].update({"20": 0.9}))),
                       ("fewer", lambda o: o.update(verified_attacks=verified[1:]))]:
        obj = json.loads(files[name].read_text())
        edit(obj)
        files[name].write_text(json.dumps(obj))
        assert read_audit(files[name], read_record(files[name])) is None  # the digest no longer matches
    assert mod.main([str(root)]) == 1
    said = capsys.readouterr().out.splitlines()
    assert said[-1] == "3 audits: 1 upgraded, rebound or current, 2 refused"
    assert any(line.startswith("rebound") and "/more/" in line and "deepfool, pairwise" in line for line in said)
    for name in ("more_and_numbers", "fewer"):
        assert any(line.startswith("refused") and f"/{name}/" in line for line in said), said
        assert json.loads(files[name].with_suffix(".audit").read_text()) == audits[name]
    new = read_audit(files["more"], read_record(files["more"]))
    assert new is not None and new["config"]["rebound_verified"] == ["deepfool", "pairwise"]
    assert {k: v for k, v in new.items() if k not in ("record_digest", "config")} == \
        {k: v for k, v in audits["more"].items() if k not in ("record_digest", "config")}
    assert mod.main([str(files["more"].with_suffix(".audit"))]) == 0
    assert capsys.readouterr().out.startswith("current")


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the synthetic task fails loudly: an audit refused 'before any work' never gets there."""
    from fabench import registry

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the audit started working")

    monkeypatch.setattr(type(registry.tasks.get("synthetic")), "load", boom)


def _edited(record: Path, name: str, change: Any) -> Path:
    """A copy of ``record`` changed by ``change`` (on its JSON), its key recomputed: only the change
    itself can be what the audit refuses."""
    obj = json.loads(record.read_text())
    change(obj)
    if isinstance(obj.get("config"), dict):
        obj["key"] = config_key(obj["config"])
    path = record.with_name(f"{name}.json")
    path.write_text(json.dumps(obj))
    return path


def test_audit_refuses_bad_options_before_any_work(tmp_path: Path, capsys, no_work: None) -> None:
    """No strong attack (``--strong ,``), a --strong-set out of its attack's range (as evaluate's
    --set is checked), a negative --n-eval: one error line, no work, no .audit (before: accepted;
    ``--strong ,`` even wrote an audit of nothing)."""
    good = tmp_path / "good.json"
    shutil.copy(PUBLISHED / "synthetic" / "binary" / sorted(p.name for p in (PUBLISHED / "synthetic" / "binary").glob("*.json"))[0], good)
    for argv, words in (
        (["--strong", ","], "no strong attacks"),
        (["--strong", "fab", "--strong-set", "fab.steps=-1"], "--strong-set fab: steps=-1 is outside its range"),
        (["--strong", "fab", "--strong-set", "fab.steps=0"], "--strong-set fab: steps=0 is outside its range"),
        (["--strong", "square", "--strong-set", "square.p_init=2"], "p_init=2.0 is outside its range"),
        (["--n-eval", "-1"], "--n-eval must be >= 0"),
    ):
        assert main(["audit", str(good), "-q", *argv]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("fabench: error: audit: ") and words in line, line
        assert not good.with_suffix(".audit").exists()


#: Records that are not what evaluate writes, each with its key recomputed: refused with one line
#: before any work (before: a hang on steps=1e12, a TypeError or AttributeError, or an audit written).
BAD_RECORDS = {
    "steps-huge": (lambda o: o["config"]["recipe_params"].__setitem__("steps", 10**12), "steps=1000000000000 is outside"),
    "d-negative": (lambda o: o["config"]["task_params"].__setitem__("d", -1), "d=-1 is outside its range"),
    "unknown-parameter": (lambda o: o["config"]["recipe_params"].__setitem__("zzz", 1), "has no parameter 'zzz'"),
    "attacks-list": (lambda o: o["config"].__setitem__("attacks", ["analytic", "pgd"]), "attacks is not a JSON object"),
    "schema-99": (lambda o: o.__setitem__("schema", 99), "a record of schema 99"),
    "key-int": (lambda o: None, "key is not the key of its configuration"),
    "worst-nan": (lambda o: o["robust_accuracy"]["worst"].__setitem__("1", float("nan")), "at r=1 is nan"),
    "worst-negative": (lambda o: o["robust_accuracy"]["worst"].__setitem__("8", -3), "at r=8 is -3"),
    "worst-rising": (lambda o: o["robust_accuracy"]["worst"].__setitem__("8", 1.0), "above the clean accuracy"),
    "sources-other": (lambda o: o["config"]["sources"].__setitem__("task", "elsewhere"), "sources differ"),
    # before: an internal KeyError: 'seed' (exit 1)
    "config-seed-missing": (lambda o: o["config"].pop("seed"), "configuration's seed None is not an integer in"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_audit_refuses_a_malformed_record_before_any_work(tmp_path: Path, capsys, case: str) -> None:
    change, words = BAD_RECORDS[case]
    record = small_record(tmp_path / "results")
    bad = _edited(record, case, change)
    if case == "key-int":
        obj = json.loads(bad.read_text())
        obj["key"] = 5
        bad.write_text(json.dumps(obj))
    capsys.readouterr()
    from fabench import registry

    task_type = type(registry.tasks.get("synthetic"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(task_type, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("worked")))
        assert main(["audit", str(bad), "--strong", "fab", "-q"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("fabench: error: ") and words in line, line
    assert not bad.with_suffix(".audit").exists()


def test_resolve_record_gives_a_finished_record_its_configuration_back(tmp_path: Path) -> None:
    from fabench import audit

    rec = read_record(small_record(tmp_path / "results"))
    res = audit.resolve_record(rec)
    assert res.key == rec.key and res.recipe_params == rec.config["recipe_params"]


def test_audit_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    """A ``<record>.audit`` that cannot be written is said before the work (:func:`check_writable`)
    and, if it happens after, as one ConfigError, not an internal OSError."""
    from fabench import audit
    from fabench.errors import ConfigError

    record = tmp_path / "rec.json"
    record.write_text("{}")
    assert audit.check_writable(record) == tmp_path / "rec.audit"
    (tmp_path / "rec.audit").mkdir()
    with pytest.raises(ConfigError, match="it is a directory"):
        audit.check_writable(record)

    class Result:
        def to_json(self) -> dict[str, Any]:
            return {}

    with pytest.raises(ConfigError, match="cannot write"):
        audit.write_audit(Result(), record)  # type: ignore[arg-type]


def test_record_options_are_refused_with_a_record_file() -> None:
    from fabench import audit
    from fabench.errors import ConfigError

    audit.refuse_record_options({"task": None, "seed": None, "set": None, "epsilons": None})
    with pytest.raises(ConfigError, match=r"--seed, --epsilons, --set describe a record"):
        audit.refuse_record_options({"seed": 9, "epsilons": "0,1", "set": ["d=3"]})
    with pytest.raises(ConfigError, match=r"^audit: --seed, --record-n-eval describe a record"):  # given, if default
        audit.refuse_record_options({"seed": 0, "record_n_eval": 0, "epsilons": None})


def test_an_audit_of_more_points_than_the_test_set_is_refused_before_training(tmp_path: Path, monkeypatch) -> None:
    """``--n-eval`` above the test set is refused as soon as the data is loaded, before the model is trained."""
    from fabench import audit
    from fabench.errors import ConfigError
    from fabench.recipes.binary import BinaryRecipe

    record = small_record(tmp_path / "results")
    rec = read_record(record)
    fits: list[int] = []
    monkeypatch.setattr(BinaryRecipe, "fit", lambda *a, **k: fits.append(1))
    n_test = int(rec.config["task_params"]["n_test"])
    with pytest.raises(ConfigError, match=rf"--n-eval {n_test + 1} but the test set holds {n_test} points"):
        audit.audit(rec, n_eval=n_test + 1, attacks=("exact",))
    assert fits == []
