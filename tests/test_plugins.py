"""Plugins through entry points, with the example package in examples/fabench-example-plugin.

Most tests *expose* the example without installing it: a ``*.dist-info`` directory whose
``entry_points.txt`` is generated from the example's ``pyproject.toml`` plus its ``src/`` on the
path is exactly what ``importlib.metadata`` sees after ``pip install``. One (slow) test installs it
with pip into a fresh virtual environment and runs it from there.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from typing import Iterator

import pytest

from fabench import leaderboard, registry
from fabench.cli import main
from fabench.errors import PluginConflictError, UnknownNameError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "fabench-example-plugin"
DIST = "fabench-example-plugin"
TINY = ["--task", "tiny-synthetic", "--set", "steps=30", "--epsilons", "0:8:2"]


def example_entry_points() -> dict[str, dict[str, str]]:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    eps: dict[str, dict[str, str]] = project["entry-points"]
    return eps


def write_dist(site: Path, name: str, groups: dict[str, dict[str, str]], files: list[str] | None = None) -> None:
    """A minimal installed distribution: ``<name>-0.1.dist-info`` with METADATA and entry points;
    with ``files`` (paths relative to ``site``), a RECORD listing them and the dist-info's files."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items())
    )
    if files is not None:
        own = [f"{info.name}/{f}" for f in ("METADATA", "entry_points.txt", "RECORD")]
        (info / "RECORD").write_text("".join(f"{f},,\n" for f in [*files, *own]))


def reload_all() -> None:
    for reg in registry.REGISTRIES.values():
        reg.reload()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A site directory holding the example's dist-info, on sys.path (and PYTHONPATH for the CLI)."""
    site = tmp_path / "site"
    write_dist(site, DIST, example_entry_points())
    paths = [str(site), str(EXAMPLE / "src")]
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv(registry.PLUGINS_ENV, raising=False)
    reload_all()
    yield site
    monkeypatch.undo()
    for mod in [m for m in sys.modules if m.startswith("fabench_example_plugin")]:
        del sys.modules[mod]
    reload_all()


def fabench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fabench.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_example_entries_register_with_their_distribution(site: Path) -> None:
    for kind, name in [("recipes", "binary-adam"), ("attacks", "fgm"), ("tasks", "tiny-synthetic")]:
        entry = registry.REGISTRIES[kind].entry(name)
        assert entry.source == DIST and entry.meta.source == DIST
    assert registry.recipes.entry("binary").source == "fabench"
    # name@distribution picks a provider; the distribution name is compared PEP 503-normalised.
    assert registry.recipes.entry("binary-adam@Fabench_Example.Plugin").source == DIST
    with pytest.raises(UnknownNameError, match="no provider 'other'"):
        registry.recipes.entry("binary-adam@other")


def test_list_evaluate_and_leaderboard_end_to_end(site: Path, tmp_path: Path) -> None:
    listed = fabench("list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    for name in ("binary-adam", "fgm", "tiny-synthetic"):
        (line,) = [x for x in lines if x.startswith(name + " ")]
        assert DIST in line
    run = fabench("evaluate", *TINY, "--recipe", "binary-adam", "--attacks", "analytic,fgm",
                  "--seeds", "0,1", "--out", str(tmp_path / "res"), "-q")
    assert run.returncode == 0, run.stderr
    assert "recipe binary-adam" in run.stdout and "fgm" in run.stdout
    records = leaderboard.read_records(tmp_path / "res")
    assert sorted(r.seed for r in records) == [0, 1]
    assert records[0].sources == {"task": DIST, "recipe": DIST, "attack analytic": "fabench", "attack fgm": DIST}
    assert records[0].attacks == ["analytic", "fgm"]
    board = fabench("leaderboard", "--results", str(tmp_path / "res"))
    assert board.returncode == 0, board.stderr
    (row,) = [x for x in board.stdout.splitlines() if x.startswith("| binary-adam")]
    assert f"binary-adam ({DIST})" in row and "2 (0, 1)" in row and "analytic, fgm" in row
    assert "## tiny-synthetic" in board.stdout


def test_fgm_attack_breaks_the_averaged_network(site: Path) -> None:
    """The example attack returns a proper AttackOutcome: monotone in the radius, finite distances."""
    from fabench.evaluation import RunConfig, evaluate

    rec, _, _ = evaluate(RunConfig(task="tiny-synthetic", recipe="binary-adam", attacks=["fgm"],
                                   radii=[0.0, 2.0, 4.0, 8.0], overrides=[("steps", "30")]),
                         out_dir=site.parent / "res")
    curve = [rec.robust_accuracy["fgm"][k] for k in ("0", "2", "4", "8")]
    assert curve == sorted(curve, reverse=True) and curve[0] > 0.9 and curve[-1] < 0.1
    assert rec.median_distance["fgm"] is not None and 0 < rec.median_distance["fgm"] < 8
    assert rec.verified_attacks == ["fgm"]  # it returns its adversarial examples; fabench checked them


def test_broken_plugin_warns_and_the_rest_load(site: Path) -> None:
    write_dist(site, "broken-plugin", {"fabench.recipes": {"broken": "no_such_module_xyz:Recipe"},
                                       "fabench.attacks": {"notmeta": "fabench.types:Meta"}})
    with pytest.warns(registry.PluginWarning) as caught:
        reload_all()
        names = registry.recipes.names()
        attacks = registry.attacks.names()
    messages = [str(w.message) for w in caught]
    assert any("'broken'" in m and "'broken-plugin'" in m and "no_such_module_xyz" in m for m in messages)
    assert any("'notmeta'" in m and "'broken-plugin'" in m for m in messages)
    assert "binary-adam" in names and "binary" in names and "broken" not in names
    assert "fgm" in attacks
    listed = fabench("list", "recipes")
    assert listed.returncode == 0 and "binary-adam" in listed.stdout
    assert "could not load recipe plugin 'broken'" in listed.stderr and "broken-plugin" in listed.stderr
    warning = [ln for ln in listed.stderr.splitlines() if "'broken'" in ln]
    assert len(warning) == 1 and warning[0].startswith("fabench: warning: could not load recipe plugin")


def test_two_providers_of_one_name_is_an_error_unless_chosen(site: Path, tmp_path: Path) -> None:
    write_dist(site, "other-plugin", {"fabench.recipes": {"binary-adam": "fabench_example_plugin.recipe:BinaryAdamRecipe"}})
    reload_all()
    with pytest.raises(PluginConflictError) as err:
        registry.recipes.entry("binary-adam")
    assert f"'{DIST}'" in str(err.value) and "'other-plugin'" in str(err.value)
    assert "binary-adam@<distribution>" in str(err.value)
    assert registry.recipes.entry("binary-adam@other-plugin").source == "other-plugin"
    assert registry.recipes.entry(f"binary-adam@{DIST}").source == DIST
    listed = fabench("list", "recipes")
    assert listed.returncode == 0
    assert sorted(x.split()[1] for x in listed.stdout.splitlines() if x.startswith("binary-adam")) == [
        DIST, "other-plugin"]
    failed = fabench("evaluate", *TINY, "--recipe", "binary-adam", "--attacks", "analytic",
                     "--out", str(tmp_path / "res"), "-q")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert DIST in failed.stderr and "other-plugin" in failed.stderr
    chosen = fabench("evaluate", *TINY, "--recipe", "binary-adam@other-plugin", "--attacks", "analytic",
                     "--out", str(tmp_path / "res"), "-q")
    assert chosen.returncode == 0, chosen.stderr
    (rec,) = leaderboard.read_records(tmp_path / "res")
    assert rec.recipe == "binary-adam" and rec.sources["recipe"] == "other-plugin"


def test_a_plugin_cannot_silently_replace_a_builtin(site: Path) -> None:
    # A plugin whose recipe claims the built-in name "binary".
    (site / "shadow_recipe.py").write_text("from dataclasses import replace\nfrom fabench_example_plugin.recipe import BinaryAdamRecipe\n"
                   "class Shadow(BinaryAdamRecipe):\n    meta = replace(BinaryAdamRecipe.meta, name='binary')\n")
    write_dist(site, "shadow-plugin", {"fabench.recipes": {"binary": "shadow_recipe:Shadow"}})
    reload_all()
    with pytest.raises(PluginConflictError, match="'fabench' and 'shadow-plugin'"):
        registry.recipes.get("binary")
    assert registry.recipes.entry("binary@fabench").source == "fabench"


def test_environment_variable_turns_plugins_off(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(registry.PLUGINS_ENV, "1")
    reload_all()
    assert "binary-adam" not in registry.recipes.names() and "binary" in registry.recipes.names()
    assert "fgm" not in registry.attacks.names() and "tiny-synthetic" not in registry.tasks.names()
    listed = fabench("list", env={registry.PLUGINS_ENV: "1"})
    assert listed.returncode == 0 and "binary-adam" not in listed.stdout and "binary " in listed.stdout
    assert "fgm" not in listed.stdout and DIST not in listed.stdout


QUIET = ("from dataclasses import replace\nfrom fabench_example_plugin.attack import FGMAttack\n"
         "class Quiet(FGMAttack):\n    meta = replace(FGMAttack.meta, name='quiet')\n")
EVIL = """import os, pathlib
from dataclasses import replace
pathlib.Path(os.environ['FABENCH_TEST_EVIL_FLAG']).write_text('imported')
if os.environ.get('FABENCH_TEST_EVIL_PATCH'):  # falsify every evaluation of this process
    import fabench.evaluation
    def _falsified(*args, **kwargs):
        raise RuntimeError('run_protocol falsified by evil_attack')
    fabench.evaluation.run_protocol = _falsified
from quiet_attack import Quiet
class Evil(Quiet):
    meta = replace(Quiet.meta, name='evil')
"""


@pytest.fixture
def two_attacks(site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """One distribution with two attack entry points; importing ``evil`` leaves a flag file (and,
    with ``FABENCH_TEST_EVIL_PATCH``, patches ``fabench.evaluation.run_protocol``). Yields the flag."""
    (site / "quiet_attack.py").write_text(QUIET)
    (site / "evil_attack.py").write_text(EVIL)
    write_dist(site, "two-attacks", {"fabench.attacks": {"quiet": "quiet_attack:Quiet", "evil": "evil_attack:Evil"}})
    flag = tmp_path / "evil-imported"
    monkeypatch.setenv("FABENCH_TEST_EVIL_FLAG", str(flag))
    reload_all()
    yield flag
    for mod in ("quiet_attack", "evil_attack"):
        sys.modules.pop(mod, None)


def test_lookup_imports_only_the_entry_point_of_that_name(two_attacks: Path) -> None:
    """A plugin that is not named runs no code: looking up built-ins or its sibling leaves it unimported."""
    assert registry.attacks.entry("analytic").source == "fabench"
    assert registry.recipes.entry("binary").source == "fabench" and registry.tasks.entry("synthetic")
    assert registry.attacks.entry("quiet").source == "two-attacks"
    assert "quiet" in registry.attacks and "evil_attack" not in sys.modules and not two_attacks.exists()
    # Listing still shows (so imports) every plugin.
    assert {"quiet", "evil"} <= set(registry.attacks.names())
    assert "evil_attack" in sys.modules and two_attacks.exists()


def test_evaluation_does_not_import_an_unnamed_plugin(two_attacks: Path, tmp_path: Path) -> None:
    """The red-team's attack: a plugin that patches run_protocol on import must not touch a run
    that does not name it (built-ins only, or its sibling from the same distribution)."""
    env = {"FABENCH_TEST_EVIL_PATCH": "1"}
    for attacks in ("analytic", "analytic,quiet"):
        run = fabench("evaluate", *TINY, "--recipe", "binary", "--attacks", attacks,
                      "--out", str(tmp_path / "res"), "-q", env=env)
        assert run.returncode == 0, run.stderr
        assert not two_attacks.exists(), f"--attacks {attacks} imported the evil plugin"
    records = leaderboard.read_records(tmp_path / "res")
    assert sorted(r.attacks for r in records) == [["analytic"], ["analytic", "quiet"]]
    # Naming it runs it: the patch is real (so the check above could fail).
    named = fabench("evaluate", *TINY, "--recipe", "binary", "--attacks", "evil", "--out", str(tmp_path / "res"),
                    "-q", env=env)
    assert named.returncode != 0 and two_attacks.exists() and "falsified" in named.stderr


def test_entry_point_named_otherwise_is_found_by_the_fallback(site: Path) -> None:
    """A plugin whose entry-point name differs from the name it registers is still found (every
    entry point is imported then), but cannot join a name a built-in provides unless chosen."""
    (site / "quiet_attack.py").write_text(QUIET)
    (site / "mismatch.py").write_text("from dataclasses import replace\nfrom quiet_attack import Quiet\n"
                                      "class Renamed(Quiet):\n    meta = replace(Quiet.meta, name='renamed')\n"
                                      "class Analytic(Quiet):\n    meta = replace(Quiet.meta, name='analytic')\n")
    write_dist(site, "mismatch-plugin", {"fabench.attacks": {"alias": "mismatch:Renamed", "other": "mismatch:Analytic"}})
    try:
        reload_all()
        assert registry.attacks.entry("analytic").source == "fabench" and "mismatch" not in sys.modules
        assert registry.attacks.entry("renamed").source == "mismatch-plugin"
        assert registry.attacks.entry("analytic").source == "fabench"  # same answer once everything is imported
        assert registry.attacks.entry("analytic@mismatch-plugin").source == "mismatch-plugin"
        with pytest.raises(UnknownNameError, match="unknown attack 'alias'"):
            registry.attacks.entry("alias")
    finally:
        for mod in ("quiet_attack", "mismatch"):
            sys.modules.pop(mod, None)


CONF_ATTACK = """import json, pathlib
from dataclasses import replace
from fabench_example_plugin.attack import FGMAttack
import conf_helper
SETTINGS = json.loads((pathlib.Path(__file__).parent / 'conf.json').read_text())
class ConfAttack(FGMAttack):
    meta = replace(FGMAttack.meta, name='conf-fgm')
"""


def test_record_is_recomputed_after_a_plugin_data_file_or_helper_module_changes(site: Path, tmp_path: Path) -> None:
    """Reuse tracks every file of the providing package (not only ``*.py``) and the files its
    distribution lists (a top-level helper module), but not compiled or unlisted files."""
    from fabench import provenance
    from fabench.evaluation import RunConfig, evaluate

    pkg = site / "confplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "attack.py").write_text(CONF_ATTACK)
    (pkg / "conf.json").write_text('{"scale": 1}')
    (site / "conf_helper.py").write_text("FACTOR = 1\n")
    write_dist(site, "conf-plugin", {"fabench.attacks": {"conf-fgm": "confplug.attack:ConfAttack"}},
               files=["confplug/__init__.py", "confplug/attack.py", "confplug/conf.json", "conf_helper.py"])
    reload_all()
    cfg = RunConfig(task="synthetic", recipe="binary", attacks=["conf-fgm"], radii=[0.0, 1.0, 2.0],
                    overrides=[("d", "16"), ("k", "4"), ("n_train", "20"), ("n_test", "10"), ("steps", "5")])
    out = tmp_path / "res"
    notes: list[str] = []
    try:
        _, path, reused = evaluate(cfg, out_dir=out, notice=notes.append)
        assert not reused and evaluate(cfg, out_dir=out, notice=notes.append)[2] and notes == []
        for changed in (pkg / "conf.json", site / "conf_helper.py"):
            changed.write_text(changed.read_text().replace("1", "2"))
            provenance.package_hash.cache_clear()  # as in a new process
            _, path2, reused = evaluate(cfg, out_dir=out, notice=notes.append)
            assert not reused and path2 == path, f"{changed.name} changed, but the record was reused"
            assert notes[-1] == "finished record found but 'conf-plugin' code changed since: recomputing"
        (pkg / "__pycache__").mkdir()
        (pkg / "__pycache__" / "attack.cpython-311.pyc").write_bytes(b"compiled")
        (site / "unlisted.py").write_text("x = 1\n")
        provenance.package_hash.cache_clear()
        assert evaluate(cfg, out_dir=out, notice=notes.append)[2] and len(notes) == 2
    finally:
        for mod in ("confplug", "confplug.attack", "conf_helper"):
            sys.modules.pop(mod, None)


def _venv_site_packages(venv: Path) -> Path:
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    return Path(purelib)


@pytest.mark.slow
def test_fresh_virtual_environment_with_the_installed_example(tmp_path: Path) -> None:
    """pip-install the example (a copy, so the repository stays clean) into a fresh venv that sees
    this environment's packages, then list and evaluate it there."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    here = sysconfig.get_path("purelib")
    # Make this environment's packages (fabench, torch, setuptools) importable in the new venv.
    (_venv_site_packages(venv) / "_fabench_test_base.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    src = tmp_path / "example"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--no-index", str(src)],
        capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    env = {**os.environ, "PYTHONPATH": ""}
    env.pop(registry.PLUGINS_ENV, None)
    listed = subprocess.run([str(python), "-m", "fabench.cli", "list"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    (line,) = [x for x in listed.stdout.splitlines() if x.startswith("binary-adam ")]
    assert DIST in line
    run = subprocess.run([str(python), "-m", "fabench.cli", "evaluate", *TINY, "--recipe", "binary-adam",
                          "--attacks", "fgm", "--out", str(tmp_path / "res"), "-q"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    (rec,) = leaderboard.read_records(tmp_path / "res")
    assert rec.sources["recipe"] == DIST and rec.clean_accuracy > 0.9
    # The plugin is installed in the venv only, not in this environment.
    assert subprocess.run([sys.executable, "-c", "import fabench_example_plugin"], capture_output=True,
                          env=env).returncode != 0
