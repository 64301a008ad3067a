"""Results you can trust from code you did not write: outcome validation, verified claims,
declared parameter ranges, provenance-based reuse, kept records, a checked cache, the Python API."""

from __future__ import annotations

import errno
import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import badinputs  # noqa: E402

import fabench  # noqa: E402
from fabench import cache, params as P, provenance, records, registry  # noqa: E402
from fabench.cli import main  # noqa: E402
from fabench.errors import ConfigError, InvalidOutcomeError, RecordWriteError  # noqa: E402
from fabench.attacks.base import MAX_CONSTANT  # noqa: E402
from fabench.evaluation import RunConfig, evaluate, resolve  # noqa: E402

TINY = {"d": 16, "k": 4, "n_train": 40, "n_test": 20, "steps": 30, "lr": 0.5}
RADII = [0.0, 1.0, 2.0, 4.0, 8.0]

GOOD_PLUGIN = '''
from typing import ClassVar
import torch
from fabench.attacks.analytic import averaged_feature_direction, line_search
from fabench.attacks.base import outcome_from_distances
from fabench.types import AttackOutcome, Meta

class Verified:
    """The averaged-feature line search, returning its adversarial examples (verifiable)."""
    meta = Meta(name="verified", description="line search with adversarials", params={"scan_points": 64},
                bounds={"scan_points": (2, 1000)})
    minimization: ClassVar[bool] = True
    def run(self, model, x, y, radii, *, data, params, seed):
        u = averaged_feature_direction(data).to(x)
        sign = (1 - 2 * y.float()).reshape((-1,) + (1,) * (x.dim() - 1))
        dirs = sign * u
        dist = line_search(model, x, y, dirs, bounds=data.bounds, t_max=2 * max(radii),
                           scan_points=int(params["scan_points"]), bisect_steps=30)
        ok = torch.isfinite(dist)
        adv = torch.full_like(x, float("nan"))
        step = (dist[ok] * (1 + 1e-3)).reshape((-1,) + (1,) * (x.dim() - 1))  # just past the boundary
        adv[ok] = (x[ok] + step * dirs[ok]).clamp(*data.bounds)
        d = torch.where(ok, (adv - x).flatten(1).norm(dim=1).nan_to_num(float("inf")), dist)
        d = torch.where(ok, d, torch.tensor(float("inf")))
        out = outcome_from_distances(radii, d)
        return AttackOutcome(out.radii, out.broken, out.distances, adversarials=adv)
'''


def _reload() -> None:
    for reg in registry.REGISTRIES.values():
        reg.reload()


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A site with the verifying attack (``fabench-ok-plugin`` 0.1) and the deliberately broken ones."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "fabench_ok_plugin.py").write_text(GOOD_PLUGIN)
    (site / "fabench_bad_plugin.py").write_text(badinputs.BAD_PLUGIN)
    badinputs.write_dist(site, "fabench-ok-plugin", {"fabench.attacks": {"verified": "fabench_ok_plugin:Verified"}})
    badinputs.write_dist(site, "fabench-bad-plugin",
                         {"fabench.attacks": {a: f"fabench_bad_plugin:{a}" for a in badinputs.BAD_ATTACKS}})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(registry.PLUGINS_ENV, raising=False)
    importlib.invalidate_caches()
    _reload()
    yield site
    monkeypatch.undo()
    for m in [m for m in sys.modules if m.startswith(("fabench_ok_plugin", "fabench_bad_plugin"))]:
        del sys.modules[m]
    _reload()


def run(attacks: list[str], out: Path, **kw: object) -> tuple[records.Record, Path, bool]:
    return evaluate(RunConfig(task="synthetic", recipe="binary", attacks=attacks, radii=RADII,
                              overrides=list(TINY.items())), out_dir=out, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("attack,why", [
    ("bad_shape", "broken has shape"), ("broken_without_distance", "claimed broken at radius"),
    ("non_monotone", "not monotone"), ("zero_distance", "distance 0 for"), ("nan_distance", "NaN"),
    ("wrong_radii", "differ from those asked"), ("false_adversarials", "is classified correctly by the model"),
    ("int_broken", "torch.bool"), ("distance_not_broken", "not marked broken"),
])
def test_invalid_outcome_is_refused_naming_attack_and_distribution(plugin_site: Path, tmp_path: Path,
                                                                   attack: str, why: str) -> None:
    with pytest.raises(InvalidOutcomeError) as err:
        run(["analytic", attack], tmp_path / "res")
    msg = str(err.value)
    assert f"attack {attack!r} (from distribution 'fabench-bad-plugin')" in msg and why in msg, msg
    assert not list((tmp_path / "res").rglob("*.json"))  # no record


def test_verified_claims_are_marked_and_agree_with_the_builtin(plugin_site: Path, tmp_path: Path) -> None:
    rec, _, _ = run(["analytic", "verified"], tmp_path / "res")
    assert rec.verified_attacks == ["analytic", "verified"]  # both return their adversarial examples
    # the same line search, so the same curve (up to bisection precision at the grid radii)
    for r in RADII:
        assert abs(rec.robust_accuracy_at(r, "verified") - rec.robust_accuracy_at(r, "analytic")) <= 0.05
    assert rec.robust_accuracy_at(0.0) > 0.5 > rec.robust_accuracy_at(8.0)
    assert rec.provenance["fabench-ok-plugin"]["version"] == "0.1"


def test_plugin_declared_bounds_are_enforced(plugin_site: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"attack verified: scan_points=1 is outside its range \[2, 1000\]"):
        evaluate(RunConfig(task="synthetic", recipe="binary", attacks=["verified"], radii=RADII,
                           overrides=[*TINY.items(), ("scan_points", 1)]), out_dir=tmp_path / "res")


def test_stale_record_is_recomputed_after_a_plugin_version_bump(plugin_site: Path, tmp_path: Path) -> None:
    notes: list[str] = []
    first, path, reused = run(["verified"], tmp_path / "res", notice=notes.append)
    assert not reused
    again, _, reused = run(["verified"], tmp_path / "res", notice=notes.append)
    assert reused and again.created == first.created and notes == []
    info = next(plugin_site.glob("fabench_ok_plugin-0.1.dist-info"))
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fabench-ok-plugin\nVersion: 0.2\n")
    info.rename(plugin_site / "fabench_ok_plugin-0.2.dist-info")
    importlib.invalidate_caches()
    _reload()
    bumped, path2, reused = run(["verified"], tmp_path / "res", notice=notes.append)
    assert not reused and path2 == path  # same configuration key, same file, recomputed
    assert notes == ["finished record found but 'fabench-ok-plugin' version changed (0.1 -> 0.2) since: recomputing"]
    assert records.read_record(path).provenance["fabench-ok-plugin"]["version"] == "0.2"
    # a change of the plugin's code (same version) is found by its hash
    (plugin_site / "fabench_ok_plugin.py").write_text(GOOD_PLUGIN + "\n# changed\n")
    provenance.package_hash.cache_clear()
    _, _, reused = run(["verified"], tmp_path / "res", notice=notes.append)
    assert not reused and notes[-1] == "finished record found but 'fabench-ok-plugin' code changed since: recomputing"


def test_fabench_code_change_is_found() -> None:
    old = {"fabench": {"version": "0.1.0", "code": "aaaa"}}
    new = provenance.provenance({})
    assert provenance.describe_change(new, new) == ""
    assert provenance.describe_change({**new, "fabench": {**new["fabench"], "code": "x"}}, new) == "fabench code changed"
    assert "version changed" in provenance.describe_change(old, {"fabench": {"version": "0.2", "code": "aaaa"}})
    assert "no provenance" in provenance.describe_change({}, new)


def test_params_bounds_and_choices() -> None:
    defaults = {"n": 3, "x": 0.5, "opt": "gd", "classes": (0, 1)}
    kw = dict(owner="t", bounds={"n": (1, 10), "x": (0.0, None), "classes": (0, 9)}, choices={"opt": ("gd", "adam")})
    assert P.resolve(defaults, {"n": 10, "x": 1e6, "opt": "adam", "classes": (9,)}, **kw)["n"] == 10
    for bad in [{"n": 0}, {"n": 11}, {"x": -1e-9}, {"opt": "sgd"}, {"classes": (0, 10)}, {"n": True}]:
        with pytest.raises(ConfigError):
            P.resolve(defaults, bad, **kw)


def test_every_builtin_numeric_parameter_has_declared_bounds() -> None:
    for kind in ("tasks", "recipes", "attacks"):
        for e in registry.REGISTRIES[kind].entries():
            for k, v in e.meta.params.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    assert k in e.meta.bounds, (kind, e.name, k)
                if isinstance(v, str) and k != "backbone":
                    assert k in e.meta.choices, (kind, e.name, k)


def test_every_builtin_numeric_parameter_is_bounded_above() -> None:
    """Every numeric parameter of a built-in task, recipe or attack (counts, step sizes, constants)
    has a finite upper end: a mistyped value is refused before any work, not run for ever, with
    steps that jump anywhere, or into a float32 overflow deep inside an attack."""
    for kind in ("tasks", "recipes", "attacks"):
        for e in registry.REGISTRIES[kind].entries():
            for k, v in e.meta.params.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    hi = e.meta.bounds[k][1]
                    assert hi is not None and hi < float("inf"), (kind, e.name, k)


@pytest.mark.parametrize("attack, sets", [
    ("cw", {"confidence": MAX_CONSTANT, "initial_const": MAX_CONSTANT, "binary_search_steps": 3, "steps": 3}),
    ("surrogate", {"beta_start": MAX_CONSTANT, "beta_end": MAX_CONSTANT, "steps": 3}),
    ("surrogate", {"beta_start": 1e-9, "beta_end": MAX_CONSTANT, "steps": 3}),
    ("exact", {"polish_band": MAX_CONSTANT, "strict": False}),
])
def test_constants_at_the_top_of_their_range_run(tmp_path: Path, attack: str, sets: dict) -> None:
    """At the upper end of its declared range a constant still runs to a verified record (above it,
    ``confidence=1e308`` and ``beta_start=1e308`` overflowed float32 inside the attack: an internal error)."""
    over = [(f"{attack}.{k}", str(v)) for k, v in sets.items()]
    cfg = RunConfig(task="synthetic", recipe="fine", attacks=[attack], radii=[0.0, 1.0, 4.0],
                    overrides=[("d", "16"), ("k", "4"), ("n_train", "40"), ("n_test", "12"), *over])
    rec, _, _ = evaluate(cfg, out_dir=tmp_path / "res")
    assert rec.verified_attacks == [attack]
    with pytest.raises(ConfigError, match="is outside its range"):
        resolve(RunConfig(task="synthetic", recipe="fine", attacks=[attack], overrides=[(over[0][0], "1e308")]))


def test_every_value_in_use_is_in_its_declared_range() -> None:
    """The built-in task files' recipe defaults, the default protocol's attack parameters, the
    audit's strong suite and the shipped sweep files all resolve within the declared ranges."""
    from fabench import sweep
    from fabench.audit import STRONG_ATTACKS, STRONG_PARAMS

    for task in registry.tasks.names():
        for recipe in registry.recipes.names():
            resolve(RunConfig(task=task, recipe=recipe))
    for name in STRONG_ATTACKS:
        meta = registry.attacks.get(name).meta
        P.resolve(meta.params, STRONG_PARAMS.get(name, {}), owner=name, bounds=meta.bounds, choices=meta.choices)
    root = Path(__file__).resolve().parent.parent
    for path in [root / "leaderboard" / "sweep.toml", *sorted((root / "sweeps").glob("*.toml"))]:
        assert sweep.load_sweep(path).jobs, path


def test_record_that_cannot_be_written_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABENCH_NO_PLUGINS", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)

    def full(record: records.Record, out_dir: Path) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records, "write_record", full)
    with pytest.raises(RecordWriteError) as err:
        run(["analytic"], tmp_path / "res")
    kept = Path(str(err.value.fallback))
    assert "No space left on device" in str(err.value) and str(kept) in str(err.value)
    assert records.read_record(kept).robust_accuracy == err.value.record.robust_accuracy  # type: ignore[attr-defined]


def test_records_are_world_readable(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        records.write_atomic(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


def test_cache_checks_content_and_never_stops_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c" / "x.pt"
    assert cache.save_entry(path, {"z": torch.arange(5.0)})
    entry = cache.load_entry(path)
    assert entry is not None and torch.equal(entry["z"], torch.arange(5.0))
    blob = bytearray(path.read_bytes())
    blob[-20] ^= 0xFF  # corrupt one byte: the hash no longer matches
    path.write_bytes(bytes(blob))
    assert cache.load_entry(path) is None
    cache.digest_path(path).unlink()
    assert cache.load_entry(path) is None  # unverifiable: a miss

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("pickling failed")

    monkeypatch.setattr(torch, "save", boom)
    assert cache.save_entry(tmp_path / "c" / "y.pt", {"z": torch.zeros(1)}) is False


def test_cli_errors_are_one_line_with_exit_status(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import fabench.cli as cli

    def internal(args: object, out: object) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "cmd_list", internal)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fabench: internal error: ZeroDivisionError") and "--traceback" in err
    assert main(["list", "--traceback"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith("fabench: internal error")
    assert main(["evaluate", "--task", "synthetic"]) == 2  # argparse's usage error: one line too
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--recipe" in err


def test_python_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABENCH_NO_PLUGINS", "1")
    _reload()
    assert {"synthetic", "mnist5v5"} <= set(fabench.list_tasks())
    assert fabench.list_recipes() == ["binary", "fine", "robust"] and "pgd" in fabench.list_attacks("p*")
    rec = fabench.evaluate(task="synthetic", recipe="binary", attacks=["analytic"], radii=[0, 1, 8],
                           params={**TINY, "bias": False, "recipe.init_std": 1e-4}, out=tmp_path / "res")
    assert rec.config["recipe_params"]["bias"] is False and rec.config["task_params"]["d"] == 16
    assert rec.robust_curve() == {0.0: rec.robust_accuracy_at(0), 1.0: rec.robust_accuracy_at(1.0),
                                  8.0: rec.robust_accuracy_at(8)}
    assert rec.robust_accuracy_at(0.0) >= rec.robust_accuracy_at(8.0)
    with pytest.raises(KeyError):
        rec.robust_accuracy_at(3.0)
    with pytest.raises(ConfigError, match="expected int"):
        fabench.evaluate(task="synthetic", recipe="binary", params={"d": 1.5}, out=tmp_path / "res")
    variant = fabench.task_variant("synthetic", "synthetic-tiny", params={"d": 16, "k": 4, "n_train": 40, "n_test": 20},
                                   radii=[0, 2, 4])
    assert variant.radii == (0.0, 2.0, 4.0) and "synthetic-tiny" in fabench.list_tasks()
    rec2 = fabench.evaluate(task="synthetic-tiny", recipe="binary", attacks=["analytic"], out=tmp_path / "res",
                            params={"steps": 30})
    # without attacks=, the Python API runs the CLI's default protocol (not a weaker list of its own)
    rec3 = fabench.evaluate(task="synthetic-tiny", recipe="binary", out=tmp_path / "res", params={"steps": 30})
    from fabench.evaluation import DEFAULT_ATTACKS

    assert tuple(rec3.config["attacks"]) == DEFAULT_ATTACKS and "exact" in DEFAULT_ATTACKS
    assert rec2.radii == [0.0, 2.0, 4.0] and rec2.data_info["n_test"] == 20
    _reload()


def test_import_fabench_is_light() -> None:
    code = "import sys, fabench; print(fabench.__version__); assert 'torch' not in sys.modules"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == fabench.__version__, p.stderr


def test_leaderboard_never_averages_another_schema(tmp_path: Path) -> None:
    rec = records.Record(task="t", recipe="r", seed=0, config={}, clean_accuracy=1.0,
                         robust_accuracy={"worst": {"0": 1.0}}, median_min_distance=1.0, median_distance={},
                         fa_score=0.0, cosine_matrix={}, n_eval=1, attacks=["a"], radii=[0.0], headline_radii=[0.0],
                         key="a" * 64)
    records.write_record(rec, tmp_path)
    future = records.Record(**{**rec.__dict__, "seed": 1, "schema": records.SCHEMA_VERSION + 1, "key": "b" * 64})
    records.write_record(future, tmp_path)
    with pytest.warns(records.RecordWarning, match="schema"):
        got = [r.seed for _, r in records.iter_records(tmp_path)]
    assert got == [0]


def test_task_file_recipe_defaults_are_inherited_reported_and_can_be_refused(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from fabench.cli import format_record
    from fabench.evaluation import resolve
    from fabench.types import Meta

    monkeypatch.setenv("FABENCH_NO_PLUGINS", "1")
    task = tmp_path / "t.toml"
    task.write_text('kind = "synthetic"\n[params]\nd = 16\nk = 4\nn_train = 40\nn_test = 20\n'
                    '[radii]\nstart = 0.0\nstop = 2.0\nstep = 1.0\n[recipe_defaults."*"]\nlr = 0.5\ninit_std = 0.01\n'
                    '[recipe_defaults.mine]\nsteps = 7\n')

    class Mine:
        meta = Meta(name="mine", description="", params={"lr": 0.1, "steps": 3, "init_std": 1e-5})
        inherit_task_defaults = True

        def fit(self, *a: object, **k: object) -> None:  # never called here
            raise AssertionError

    registry.recipes.register(Mine, source="test-dist")
    try:
        res = resolve(RunConfig(task=str(task), recipe="mine", attacks=["analytic"]))
        assert res.recipe_params == {"lr": 0.5, "steps": 7, "init_std": 0.01}
        assert res.task_recipe_defaults == {"lr": 0.5, "init_std": 0.01, "steps": 7}
        Mine.inherit_task_defaults = False
        registry.recipes.register(Mine, source="test-dist")
        res = resolve(RunConfig(task=str(task), recipe="mine", attacks=["analytic"]))
        assert res.recipe_params == {"lr": 0.1, "steps": 7, "init_std": 1e-5}  # own table only
    finally:
        _reload()
    rec, _, _ = evaluate(RunConfig(task=str(task), recipe="binary", attacks=["analytic"]), out_dir=tmp_path / "r")
    assert rec.task_recipe_defaults == {"lr": 0.5, "init_std": 0.01}
    assert "recipe parameters from the task file: init_std=0.01, lr=0.5" in format_record(rec)


@pytest.mark.parametrize("recipe", ["binary", "fine", "robust"])
def test_every_builtin_attack_shows_its_adversarials(tmp_path: Path, recipe: str) -> None:
    """No built-in attack claims a distance fabench has not checked on the model: every attack of
    the default protocol returns an adversarial example per claim (line searches and DeepFool too)."""
    tiny = [(k, v) for k, v in TINY.items() if recipe != "robust" or k not in ("steps", "lr")]  # no training
    rec, _, _ = evaluate(RunConfig(task="synthetic", recipe=recipe, radii=RADII, overrides=tiny), out_dir=tmp_path)
    assert rec.robust_accuracy_at(0.0) > rec.robust_accuracy_at(8.0)  # the attacks break something
    assert {"analytic", "pairwise", "deepfool"} <= set(rec.attacks)
    assert sorted(rec.verified_attacks) == sorted(rec.attacks), (rec.attacks, rec.verified_attacks)


class _Threshold:
    """A stand-in classifier: a point is classified correctly while its coordinates sum to less
    than 2 (``batch_says_correct``: a batch of several is judged correct whatever it holds)."""

    def __init__(self, *, batch_says_correct: bool = False) -> None:
        self.batch_says_correct = batch_says_correct

    def correct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        truth = x.flatten(1).sum(dim=1) < 2.0
        if len(x) > 1 and self.batch_says_correct:
            return torch.ones(len(x), dtype=torch.bool)
        return truth


def test_line_adversarials_nudge_boundary_ties_and_drop_what_does_not_flip() -> None:
    from fabench.attacks.analytic import line_adversarials

    x = torch.zeros(3, 4)
    u = torch.full((3, 4), 0.5)  # unit vectors; the sum reaches 2 at t = 1
    steps = torch.tensor([1.0 + 1e-3, 1.0 - 2e-6, 0.5])  # past the boundary, a tie just short of it, far short
    adv, dist = line_adversarials(_Threshold(), x, torch.ones(3, dtype=torch.long), u, steps,
                                  bounds=(-float("inf"), float("inf")))
    assert dist[0] == pytest.approx(1.001) and torch.equal(adv[0], u[0] * steps[0])
    assert float(steps[1]) < float(dist[1]) <= 1.0 + 1e-5  # moved out by a nudge, not by a whole step
    assert not _Threshold().correct(adv[1:2], torch.ones(1)).any()
    assert dist[2] == float("inf") and torch.isnan(adv[2]).all()  # never claimed


@pytest.mark.parametrize("alone_correct,ok", [(False, True), (True, False)])
def test_claims_judged_correct_in_a_batch_are_rechecked_alone(alone_correct: bool, ok: bool) -> None:
    from fabench.types import AttackOutcome
    from fabench.validation import validate_outcome

    x = torch.zeros(2, 4)
    adv = torch.full((2, 4), 0.5 if not alone_correct else 0.1)  # sums 2.0 (adversarial) or 0.4 (not)
    d = (adv - x).flatten(1).norm(dim=1)
    out = AttackOutcome((0.0, 2.0), torch.tensor([[False, False], [True, True]]), d, adversarials=adv)
    model = _Threshold(batch_says_correct=True)  # a batch of two judges both correct
    kw = dict(name="t", source="fabench", radii=(0.0, 2.0), model=model, x=x, y=torch.ones(2),
              clean_correct=torch.ones(2, dtype=torch.bool))
    if ok:
        assert validate_outcome(out, **kw) is True  # type: ignore[arg-type]
    else:
        with pytest.raises(InvalidOutcomeError, match="classified correctly by the model"):
            validate_outcome(out, **kw)  # type: ignore[arg-type]
