"""The command line: a full small evaluation, JSON output, reuse, and bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fabench.cli import main

SMALL = ["--task", "synthetic", "--set", "d=200", "--set", "n_train=200", "--set", "n_test=40",
         "--epsilons", "0,2,4,8,16", "--quiet"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(argv, out=out)
    err = capsys.readouterr().err
    return code, out.getvalue(), err


def files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


def test_list_shows_builtins(capsys) -> None:
    code, out, _ = run(["list"], capsys)
    assert code == 0
    for name in ("synthetic", "binary", "fine", "robust", "analytic", "pairwise", "pgd", "deepfool"):
        assert name in out
    code, out, _ = run(["list", "attacks", "p*"], capsys)
    assert "pgd" in out and "deepfool" not in out


def test_evaluate_json_record_and_reuse(tmp_path: Path, capsys) -> None:
    argv = [a for a in SMALL if a != "--quiet"] + ["--recipe", "fine", "--out", str(tmp_path), "--json"]
    code, out, err = run(["evaluate"] + argv, capsys)
    assert code == 0
    rec = json.loads(out)  # exactly one JSON object on stdout
    assert out.count("\n") == 1
    for key in ("task", "recipe", "seed", "config", "clean_accuracy", "robust_accuracy", "median_min_distance",
                "fa_score", "cosine_matrix", "timings", "versions"):
        assert key in rec
    assert rec["config"]["task_params"]["d"] == 200 and rec["config"]["recipe_params"]["steps"] == 100
    assert set(rec["robust_accuracy"]) == {"analytic", "pairwise", "pgd", "apgd", "deepfool", "exact", "worst"}
    worst = rec["robust_accuracy"]["worst"]
    assert list(worst) == ["0", "2", "4", "8", "16"]
    for a in ("analytic", "pairwise", "pgd", "apgd", "deepfool"):
        assert all(worst[r] <= rec["robust_accuracy"][a][r] for r in worst)
    assert rec["clean_accuracy"] == 1.0 and rec["fa_score"] < 0.1
    assert "robust accuracy" in err  # the human table went to stderr
    [path] = files(tmp_path)
    stamp = path.stat().st_mtime_ns
    code, out2, err2 = run(["evaluate"] + argv, capsys)
    assert code == 0 and "reused" in err2 and path.stat().st_mtime_ns == stamp
    assert json.loads(out2)["key"] == rec["key"]
    code, _, err3 = run(["evaluate"] + argv + ["--force"], capsys)
    assert code == 0 and "reused" not in err3 and path.stat().st_mtime_ns != stamp


def test_human_output_is_a_table(tmp_path: Path, capsys) -> None:
    code, out, _ = run(["evaluate"] + SMALL + ["--recipe", "binary", "--out", str(tmp_path),
                                               "--attacks", "analytic"], capsys)
    assert code == 0
    assert "clean accuracy 1.000" in out and "| radius" in out and "feature-averaging score" in out
    assert "cosine matrix" in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--task", "synthetc", "--recipe", "binary"], "did you mean 'synthetic'"),
        (["--task", "synthetic", "--recipe", "finee"], "unknown recipe"),
        (["--task", "synthetic", "--recipe", "fine", "--attacks", "pgd,cwx"], "unknown attack 'cwx'"),
        (["--task", "synthetic", "--recipe", "fine", "--set", "d"], "malformed --set"),
        (["--task", "synthetic", "--recipe", "fine", "--set", "d=big"], "expected int"),
        (["--task", "synthetic", "--recipe", "fine", "--set", "width=3"], "no task or recipe parameter"),
        (["--task", "synthetic", "--recipe", "fine", "--epsilons", "0,-1"], "non-negative"),
        (["--task", "synthetic", "--recipe", "fine", "--epsilons", "0,abc"], "expected numbers"),
        (["--task", "synthetic", "--recipe", "fine", "--n-eval", "-3"], "--n-eval"),
        (["--task", "nowhere.toml", "--recipe", "fine"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_no_record(tmp_path: Path, capsys, argv: list[str], needle: str) -> None:
    code, out, err = run(["evaluate", *argv, "--out", str(tmp_path / "res"), "--quiet"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fabench: error:") and needle in lines[0], err
    assert "Traceback" not in err and out == ""
    assert files(tmp_path / "res") == []


def test_unwritable_out_is_one_line(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(["evaluate"] + SMALL + ["--recipe", "fine", "--out", str(blocker / "res")], capsys)
    assert code == 2 and err.strip().startswith("fabench: error: cannot write results")
    assert len(err.strip().splitlines()) == 1


def test_task_file_path_and_console_entry(tmp_path: Path) -> None:
    task = tmp_path / "tiny.toml"
    task.write_text(
        'name = "tiny"\nkind = "synthetic"\n[params]\nk = 4\nd = 64\nn_train = 80\nn_test = 20\n'
        "[radii]\nstart = 0.0\nstop = 8.0\nstep = 4.0\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fabench.cli", "evaluate", "--task", str(task), "--recipe", "robust",
         "--attacks", "analytic,pairwise", "--out", str(tmp_path / "res"), "--json", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)
    assert rec["task"] == "tiny" and rec["config"]["task_params"]["k"] == 4
    assert list(rec["robust_accuracy"]["worst"]) == ["0", "4", "8"]


def test_help_and_usage_errors_import_no_torch() -> None:
    """`fabench --help` and a usage error answer without importing torch (the slow part of a start)."""
    import subprocess
    import sys

    code = ("import sys, io, contextlib; from fabench import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "    a = cli.main(['--help']); b = cli.main(['evaluate', '--bogus'])\n"
            "print(a, b, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "2", "False"]


HEAVY = ("torch", "foolbox", "pandas", "matplotlib")


def heavy_imports_after(argv_list: list[list[str]]) -> tuple[list[int], list[str]]:
    """Exit codes of ``fabench ARGV`` for each ARGV (one fresh interpreter, quiet), and which of
    :data:`HEAVY` it imported."""
    code = ("import sys, io, json, contextlib; from fabench import cli\n"
            "codes = []\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            f"    for argv in {argv_list!r}:\n"
            "        codes.append(cli.main(argv))\n"
            f"print(json.dumps([codes, sorted(m for m in {HEAVY!r} if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    codes, heavy = json.loads(out.splitlines()[-1])
    return codes, heavy


def test_list_and_input_errors_import_no_torch() -> None:
    """Listing (with patterns and -v) and input errors are answered from the registries' metadata:
    no torch, foolbox, pandas or matplotlib is imported (``import torch`` alone takes seconds)."""
    codes, heavy = heavy_imports_after([
        ["list"], ["list", "recipes", "-v"], ["list", "attacks", "p*"], ["list", "tasks", "mnist*"],
        ["evaluate", "--task", "nosuch", "--recipe", "binary"],
        ["evaluate", "--task", "synthetic", "--recipe", "binary", "--set", "m=0"],
        ["evaluate", "--task", "synthetic", "--recipe", "fine", "--attacks", "nosuch"],
    ])
    assert codes == [0, 0, 0, 0, 2, 2, 2]
    assert heavy == []


def test_reused_record_imports_no_torch(tmp_path: Path, capsys) -> None:
    """A finished record is found and reported (resolve, key, provenance, lookup) without torch;
    the same command with --force does import it (the check can fail)."""
    argv = ["evaluate", *SMALL, "--recipe", "robust", "--attacks", "analytic", "--out", str(tmp_path)]
    assert run(argv, capsys)[0] == 0
    [path] = files(tmp_path)
    stamp = path.stat().st_mtime_ns
    codes, heavy = heavy_imports_after([argv, [*argv, "--json"]])
    assert codes == [0, 0] and heavy == [] and path.stat().st_mtime_ns == stamp
    codes, heavy = heavy_imports_after([[*argv, "--force"]])
    assert codes == [0] and "torch" in heavy


def test_list_kinds_are_the_registries() -> None:
    from fabench import registry
    from fabench.cli import REGISTRY_KINDS

    assert tuple(registry.REGISTRIES) == REGISTRY_KINDS


def test_evaluate_help_names_the_default_protocol(capsys) -> None:
    from fabench.evaluation import DEFAULT_ATTACKS

    assert main(["evaluate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert ",".join(DEFAULT_ATTACKS) in text.replace(", ", ",")


FUZZ_TINY = ["evaluate", "--task", "synthetic", "--recipe", "binary", "--set", "d=16", "--set", "k=4",
             "--set", "n_train=20", "--set", "n_test=10", "--set", "steps=5", "--epsilons", "0,1,2",
             "--attacks", "analytic", "-q", "--threads", "1"]


def test_parse_radii_and_seeds_refuse_empty_items_and_normalise_negative_zero() -> None:
    from fabench.cli import parse_radii, parse_seeds
    from fabench.errors import ConfigError

    assert [str(r) for r in parse_radii("-0,1")] == ["0.0", "1.0"]
    assert str(parse_radii("-0:1:1")[0]) == "0.0"
    for text in ("0,,1", "0,1,", ",0"):
        with pytest.raises(ConfigError, match="an empty item"):
            parse_radii(text)
    for text in ("", " "):  # the same error for both
        with pytest.raises(ConfigError, match="--epsilons is empty"):
            parse_radii(text)
    with pytest.raises(ConfigError, match="an empty item"):
        parse_seeds("0,,1")


@pytest.mark.parametrize("value", ["", " "])
def test_an_explicit_empty_epsilons_is_an_error(value: str, tmp_path: Path, capsys) -> None:
    argv = [a if a != "0,1,2" else value for a in FUZZ_TINY] + ["--out", str(tmp_path)]
    code, _, err = run(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "--epsilons is empty" in err and not files(tmp_path)


@pytest.mark.parametrize("threads", ["1000", "65536", str(2**64), "99999999999999999999"])
def test_threads_beyond_four_per_cpu_are_refused_at_parse_time(threads: str, tmp_path: Path, capsys,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    argv = [a if a != "1" else threads for a in FUZZ_TINY] + ["--out", str(tmp_path)]
    code, _, err = run(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "at most 8 (4 x the 2 CPUs here)" in err, err


def test_device_and_threads_are_checked_before_a_finished_record_is_reused(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = FUZZ_TINY + ["--out", str(tmp_path), "--device", "cpu"]
    assert run(argv, capsys)[0] == 0
    code, _, err = run(argv[:-2] + ["--device", "tpu"], capsys)
    assert code == 2 and "--device 'tpu'" in err
    monkeypatch.setenv("FABENCH_DEVICE", "tpu")
    code, _, err = run(argv[:-2], capsys)
    assert code == 2 and err.count("\n") == 1 and "FABENCH_DEVICE 'tpu'" in err and "--device" not in err


def test_batch_size_is_checked_before_a_finished_record_is_reused(tmp_path: Path, capsys) -> None:
    argv = FUZZ_TINY + ["--out", str(tmp_path)]
    assert run(argv, capsys)[0] == 0
    for bad in ["-1", "99999999999999999999"]:
        code, _, err = run(argv + ["--batch-size", bad], capsys)
        assert code == 2 and err.count("\n") == 1 and f"--batch-size {bad}: expected an integer from 0" in err, err
    assert run(argv + ["--batch-size", "7"], capsys)[0] == 0  # a good one reuses the record
    assert len(list(tmp_path.rglob("*.json"))) == 1


@pytest.mark.parametrize("where", ["afile", "/proc/x"])
def test_a_bad_plot_dir_is_refused_before_any_record_is_written(where: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    plot_dir = str(tmp_path / where) if where == "afile" else where
    out = tmp_path / "out"
    code, _, err = run(FUZZ_TINY + ["--out", str(out), "--plot", "--plot-dir", plot_dir], capsys)
    assert code == 2 and err.count("\n") == 1 and "--plot-dir" in err and not files(out), err


def test_a_cache_dir_that_is_a_file_is_one_error_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    for bad in ("afile", "afile/sub"):
        code, _, err = run(FUZZ_TINY + ["--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / bad)], capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("fabench: error: --cache-dir"), err
    assert not files(tmp_path / "out")


def test_an_unwritable_cache_is_one_prefixed_warning_line(tmp_path: Path, capsys) -> None:
    import warnings

    from fabench import cache
    from fabench.cli import _show_warning

    (tmp_path / "afile").write_text("x")
    cache._WARNED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _show_warning
        for kind in ("backbones", "features"):  # two entries, one directory: one line
            assert not cache.save_entry(tmp_path / "afile" / kind / "x.pt", {"z": 1})
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fabench: warning: cannot write to the cache directory"), err


def test_reusing_a_record_needs_no_writable_results_directory(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fabench.evaluation
    from fabench.errors import ConfigError

    argv = FUZZ_TINY + ["--out", str(tmp_path)]
    assert run(argv, capsys)[0] == 0

    def read_only(out_dir: Path) -> None:
        raise ConfigError(f"cannot write results to {str(out_dir)!r}: Read-only file system")

    monkeypatch.setattr(fabench.evaluation, "check_writable", read_only)
    code, out, err = run(argv, capsys)
    assert code == 0 and "reused finished record" in out, err


PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
#: Runs the ``fabench`` console script (``{start}``: how it is started) with ``fabench list``,
#: sending itself a real SIGINT the moment ``fabench.cli`` starts importing: a Ctrl-C that lands
#: before the command line's own handling exists.
CTRL_C_AT_IMPORT = """
import os, signal, sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "fabench.cli":
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, CtrlC())
sys.argv = ["fabench", "list"]
{start}
"""


def console_script() -> tuple[str, str]:
    """``(module, function)`` of the ``fabench`` console script, as pyproject.toml declares it."""
    import tomllib

    module, _, func = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]["fabench"].partition(":")
    return module, func


@pytest.mark.parametrize("how", ["console script", "python -m fabench"])
def test_ctrl_c_while_the_command_line_imports_is_one_line_and_130(how: str) -> None:
    module, func = console_script()
    start = (f"from {module} import {func} as main\nsys.exit(main())" if how == "console script"  # as pip's wrapper
             else "import runpy\nrunpy.run_module('fabench', run_name='__main__', alter_sys=True)")
    proc = subprocess.run([sys.executable, "-c", CTRL_C_AT_IMPORT.format(start=start)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 130 and proc.stderr == "fabench: interrupted\n", proc.stderr
    assert proc.stdout == ""


def test_the_console_script_handles_ctrl_c_from_its_first_import() -> None:
    """Before the console script's Ctrl-C handling runs, only ``fabench`` and its entry module are
    imported, and they import nothing (``fabench.__version__`` is looked up on first use): a Ctrl-C
    can land outside the handling only in the interpreter's own start-up."""
    module, _ = console_script()
    code = f"import sys, json; before = set(sys.modules); import {module}; print(json.dumps(sorted(set(sys.modules) - before)))"
    new = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert {"importlib.metadata", "typing"}.isdisjoint(new), new
    assert sorted(m for m in new if m.startswith("fabench")) == ["fabench", module], new


def test_python_m_fabench_is_the_command_line() -> None:
    import fabench

    proc = subprocess.run([sys.executable, "-m", "fabench", "list", "tasks", "synthetic"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "synthetic" in proc.stdout, proc.stderr
    assert fabench.__version__ != "" and "__version__" in fabench.__all__


def test_an_error_line_escapes_control_characters_and_stays_one_line() -> None:
    from fabench.cli import one_line
    from fabench.errors import ConfigError

    line = one_line(ConfigError("name 'a\0b\x1b[2J' \n and\tmore"))
    assert line == "fabench: error: name 'a\\x00b\\x1b[2J' and more"
    assert one_line(ConfigError("naïve ünïcode")) == "fabench: error: naïve ünïcode"  # printable: kept
    assert "\\x00" in one_line(ValueError("embedded \0 here"))


@pytest.mark.parametrize("out, needle", [
    ("~no-such-user-fabench/res", "--out '~no-such-user-fabench/res' is not a usable path: Could not determine home"),
    ("x" * 5000, "is not a usable path: File name too long"),
])
def test_an_out_the_system_refuses_is_one_error_line(out: str, tmp_path: Path, capsys, monkeypatch,
                                                       needle: str) -> None:
    """An unknown ``~user`` (was: internal RuntimeError) or a name too long for the file system (was:
    internal OSError from the reuse look-up) is one error line, exit 2."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["evaluate"] + SMALL + ["--recipe", "fine", "--out", out, "-q"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("fabench: error:") and needle in lines[0], err


@pytest.mark.parametrize("argv", [["list"], ["sweep", "leaderboard/sweep.toml", "--dry-run"]])
def test_a_reader_that_closes_stdout_stops_the_command_quietly(argv: list[str]) -> None:
    """``fabench ... | head -1``: when the reader has gone, the command stops with the shell's SIGPIPE
    status and prints nothing (was: "internal error: BrokenPipeError", exit 1)."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "fabench", *argv], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_a_broken_pipe_that_is_not_stdouts_reader_is_still_reported(monkeypatch, capsys) -> None:
    """Only a closed stdout is quiet: a BrokenPipeError from anything else (a worker's socket) is an
    internal error line, never swallowed."""
    import fabench.cli as cli

    def broken(args, stream):  # type: ignore[no-untyped-def]
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_list", broken)
    code, _, err = run(["list"], capsys)
    assert code == 1 and "internal error: BrokenPipeError" in err
