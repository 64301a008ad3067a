"""Provenance: which files and dependencies decide whether a finished record is reused."""

from __future__ import annotations

import importlib
import importlib.util
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from fabench import provenance
from fabench.records import read_record

HEX16 = re.compile(r"[0-9a-f]{16}")
TINY = ["--task", "synthetic", "--recipe", "binary", "--set", "d=16", "--set", "k=4", "--set", "n_train=20",
        "--set", "n_test=10", "--set", "steps=5", "--epsilons", "0,1,2", "--attacks", "analytic", "-q"]


@pytest.fixture(autouse=True)
def _fresh_hashes() -> Iterator[None]:
    provenance.clear_caches()
    yield
    provenance.clear_caches()


def fabench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fabench.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def shadow_pyautoattack(root: Path, flag: Path) -> Path:
    """A copy of pyautoattack's sources under ``root`` (same version), APGD cut to one iteration;
    importing it leaves ``flag``."""
    spec = importlib.util.find_spec("pyautoattack")
    assert spec is not None and spec.submodule_search_locations
    real = Path(list(spec.submodule_search_locations)[0])
    copy = root / "pyautoattack"
    shutil.copytree(real, copy, ignore=shutil.ignore_patterns("__pycache__", "examples"))
    init = copy / "__init__.py"
    init.write_text(f"import pathlib; pathlib.Path({str(flag)!r}).write_text('imported')\n" + init.read_text())
    apgd = copy / "autopgd_base.py"
    apgd.write_text(apgd.read_text().replace("self.n_iter = n_iter", "self.n_iter = 1", 1))
    return root


def test_every_record_carries_dependency_versions_and_code_hashes() -> None:
    deps = provenance.provenance({})[provenance.DEPENDENCIES_KEY]
    assert set(deps) == {"torch", "torchvision", "numpy", "foolbox", "eagerpy", "pyautoattack"}
    for dist, entry in deps.items():
        assert entry["version"] == md.version(dist)
        if dist in ("foolbox", "eagerpy", "pyautoattack"):
            assert HEX16.fullmatch(entry["code"]), entry
        else:
            assert set(entry) == {"version"}


def test_dependency_provenance_imports_nothing() -> None:
    """The CLI stays fast: the hashes come from files found by find_spec, nothing is imported."""
    code = ("import sys, time; t = time.perf_counter(); from fabench.provenance import provenance; p = provenance({}); "
            "print(sorted(m for m in ('torch', 'numpy', 'foolbox', 'eagerpy', 'pyautoattack', 'torchvision') "
            "if m in sys.modules)); assert p['dependencies']['pyautoattack']['code'] != 'missing'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_shadowed_dependency_with_the_same_version_is_a_code_change(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    old = provenance.provenance({})
    flag = tmp_path / "shadow-imported"
    monkeypatch.syspath_prepend(str(shadow_pyautoattack(tmp_path / "shadow", flag)))
    monkeypatch.delitem(sys.modules, "pyautoattack", raising=False)  # what `import` would load now
    importlib.invalidate_caches()
    provenance.clear_caches()
    new = provenance.provenance({})
    assert new["dependencies"]["pyautoattack"]["version"] == old["dependencies"]["pyautoattack"]["version"]
    assert provenance.describe_change(old, new) == "dependency pyautoattack code changed"
    assert not flag.exists()  # found, hashed, not imported


def test_reuse_refused_under_a_shadowed_dependency_same_key(tmp_path: Path) -> None:
    """The red-team's case end to end: a record computed with the real pyautoattack is not reused
    by a process that would import a copy of the same version with other code."""
    out = tmp_path / "res"
    first = fabench("evaluate", *TINY, "--out", str(out))
    assert first.returncode == 0, first.stderr
    [path] = list(out.rglob("*.json"))
    assert read_record(path).provenance["dependencies"]["pyautoattack"]["code"] != "missing"
    again = fabench("evaluate", *TINY, "--out", str(out))
    assert again.returncode == 0 and "recomputing" not in again.stderr
    shadow = shadow_pyautoattack(tmp_path / "shadow", tmp_path / "flag")
    env = {"PYTHONPATH": os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")])}
    shadowed = fabench("evaluate", *TINY, "--out", str(out), env=env)
    assert shadowed.returncode == 0, shadowed.stderr
    assert ("fabench: finished record found but dependency pyautoattack code changed since: recomputing"
            in shadowed.stderr), shadowed.stderr
    assert list(out.rglob("*.json")) == [path]  # same configuration key: the same file, recomputed


def test_missing_dependency_is_recorded_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provenance, "DEPENDENCIES", ("torch", "no-such-dist-xyz"))
    monkeypatch.setattr(provenance, "CODE_HASHED", {"no-such-dist-xyz": "no_such_module_xyz"})
    provenance.clear_caches()
    deps = provenance.provenance({})["dependencies"]
    assert deps["no-such-dist-xyz"] == {"version": "missing", "code": "missing"}
    assert deps["torch"]["version"] == md.version("torch")


def test_describe_change_names_the_dependency() -> None:
    new = provenance.provenance({})
    torch_old = {**new, "dependencies": {**new["dependencies"], "torch": {"version": "2.14.1"}}}
    torch_new = {**new, "dependencies": {**new["dependencies"], "torch": {"version": "2.11.0"}}}
    assert provenance.describe_change(torch_old, torch_new) == "torch version changed (2.14.1 -> 2.11.0)"
    gone = {**new, "dependencies": {**new["dependencies"], "eagerpy": {"version": "missing", "code": "missing"}}}
    assert provenance.describe_change(new, gone) == (
        f"eagerpy version changed ({new['dependencies']['eagerpy']['version']} -> missing)")
    older = {k: v for k, v in new.items() if k != "dependencies"}  # a record of an older fabench
    assert provenance.describe_change(older, new) == (
        "it has no record of its dependencies' versions and code (written by an older fabench)")
    assert provenance.describe_change({**new, "x": "garbage"}, {**new, "x": {"version": "1"}}) == "'x' changed"


def _plugin(site: Path) -> None:
    pkg = site / "confplug"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "attack.py").write_text("import conf_helper\n")
    (pkg / "conf.json").write_text('{"steps": 100}')
    (pkg / "__pycache__" / "attack.cpython-311.pyc").write_bytes(b"compiled")
    (site / "conf_helper.py").write_text("STEPS = 100\n")
    (site / "unlisted.py").write_text("x = 1\n")
    (site / "__editable__.conf_plugin.pth").write_text(f"{site}\n")
    info = site / "conf_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: conf-plugin\nVersion: 0.1\n")
    listed = ["confplug/__init__.py", "confplug/attack.py", "confplug/conf.json", "conf_helper.py",
              "confplug/__pycache__/attack.cpython-311.pyc", "__editable__.conf_plugin.pth",
              "conf_plugin-0.1.dist-info/METADATA", "conf_plugin-0.1.dist-info/RECORD", "../../bin/conf-tool"]
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in listed))


def _code(site: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    with monkeypatch.context() as m:
        m.syspath_prepend(str(site))
        importlib.invalidate_caches()
        provenance.clear_caches()
        return provenance.package_hash("confplug.attack", "conf-plugin")


@pytest.mark.parametrize("edit,counts", [
    ("confplug/conf.json", True),             # a data file of the package
    ("conf_helper.py", True),                 # a top-level module the distribution lists
    ("confplug/attack.py", True),
    ("confplug/__pycache__/attack.cpython-311.pyc", False),
    ("unlisted.py", False),                   # not part of the distribution
    ("conf_plugin-0.1.dist-info/METADATA", False),
    ("__editable__.conf_plugin.pth", False),  # an install hook (absolute paths)
])
def test_plugin_code_hash_covers_package_and_listed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          edit: str, counts: bool) -> None:
    site = tmp_path / "site"
    _plugin(site)
    before = _code(site, monkeypatch)
    assert HEX16.fullmatch(before)
    with open(site / edit, "a") as fh:
        fh.write("\n# edited\n")
    assert (_code(site, monkeypatch) != before) == counts


def test_plugin_code_hash_does_not_depend_on_where_it_is_installed(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _plugin(tmp_path / "a" / "site")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "site" / "__editable__.conf_plugin.pth").write_text(f"{tmp_path / 'b' / 'site'}\n")
    assert _code(tmp_path / "a" / "site", monkeypatch) == _code(tmp_path / "b" / "site", monkeypatch)
