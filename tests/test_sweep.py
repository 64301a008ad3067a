"""``fabench sweep``: sweep files, a real local Ray, resume after an interrupt, contained failures."""

from __future__ import annotations

import dataclasses

import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

from fabench import sweep as S
from fabench.cli import main
from fabench.evaluation import evaluate
from fabench.records import iter_records, read_record

ROOT = Path(__file__).resolve().parents[1]
# Tiny synthetic jobs: a fraction of a second each.
TINY = """
tasks = ["synthetic"]
attacks = ["analytic", "pairwise"]
epsilons = "0:20:2"
set = ["d=64", "n_train=100", "n_test=50"]
"""
VOLATILE = {"timings", "created"}  # everything else of a record must be identical


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """One local Ray (2 CPUs) shared by this module's in-process sweeps; run_sweep leaves it running."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def numbers(rec: Any) -> dict[str, Any]:
    return {k: v for k, v in rec.to_json().items() if k not in VOLATILE}


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue(), capsys.readouterr().err


def fabench(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fabench.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, **kw)


def test_sweep_on_ray_gives_the_records_of_evaluate_bit_for_bit(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep_dir = tmp_path / "sweeps"
    sweep_dir.mkdir()
    path = write(sweep_dir / "s.toml", TINY + 'recipes = ["binary", "fine"]\nseeds = [0, 1]\nout = "recs"\n')
    monkeypatch.chdir(tmp_path)  # records go next to the sweep file, not into the CWD
    sw = S.load_sweep(path)
    assert sw.out_dir == sweep_dir / "recs" and len(sw.jobs) == 4
    assert S.finished(sw) == [False] * 4
    events: list[S.JobEvent] = []
    res = S.run_sweep(sw, jobs=2, on_event=events.append)
    assert res.ok and res.mode == "ray (local)" and len(res.done) == 4 and not res.reused
    assert sorted(e.finished for e in events if e.kind == "done") == [1, 2, 3, 4]
    swept = {rec.key: rec for _, rec in iter_records(sw.out_dir)}
    assert set(swept) == {j.key for j in sw.jobs}

    alone = tmp_path / "alone"
    for job in sw.jobs:  # the same jobs, one by one, in this process, on the worker's thread count
        cfg = dataclasses.replace(job.config, threads=int(swept[job.key].runtime["threads"]))
        rec, _, reused = evaluate(cfg, out_dir=alone)
        assert not reused
        assert numbers(rec) == numbers(swept[job.key])
    # not vacuous: the two recipes and the two seeds really differ
    fa = {(r.recipe, r.seed): r.fa_score for r in swept.values()}
    assert fa[("binary", 0)] > 0.5 > fa[("fine", 0)] and fa[("binary", 0)] != fa[("binary", 1)]

    # a rerun reuses everything and writes nothing
    stamps = {p: p.stat().st_mtime_ns for p in sw.out_dir.rglob("*.json")}
    again = S.run_sweep(S.load_sweep(path), jobs=2)
    assert len(again.reused) == 4 and not again.done and not again.failed
    assert {p: p.stat().st_mtime_ns for p in sw.out_dir.rglob("*.json")} == stamps


def test_a_failing_job_is_reported_and_the_others_finish(ray_session: None, tmp_path: Path) -> None:
    # k=80 > d=64: the synthetic task cannot draw 80 orthogonal centres, so that job fails at load
    path = write(tmp_path / "s.toml", TINY + 'recipes = ["binary"]\nseeds = [0]\nvariants = [["k=10"], ["k=80"], ["k=4"]]\n')
    sw = S.load_sweep(path)
    res = S.run_sweep(sw, jobs=2)
    assert sorted(j.label for j in res.done) == sorted(j.label for j in sw.jobs if "k=80" not in j.label)
    [(job, error)] = res.failed
    assert "k=80" in job.label and error.startswith("ConfigError: need k <= d") and "\n" not in error
    assert len(list(sw.out_dir.rglob("*.json"))) == 2


def test_in_process_retries_once_then_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    path = write(tmp_path / "s.toml", TINY + 'recipes = ["binary", "fine"]\nseeds = [0]\n')
    calls: list[str] = []
    real = S.execute

    def flaky(cfg: Any) -> dict[str, Any]:
        calls.append(cfg.recipe)
        if cfg.recipe == "fine":
            raise MemoryError("simulated out of memory\nsecond line")
        if calls.count("binary") == 1:
            raise RuntimeError("transient")
        return real(cfg)

    monkeypatch.setattr(S, "execute", flaky)
    code, out, _ = cli(["sweep", str(path), "--jobs", "1"], capsys)
    assert code == 1
    assert calls == ["binary", "binary", "fine", "fine"]  # each retried once, no more
    assert "[1/2] done" in out and "FAILED" in out and "MemoryError: simulated out of memory" in out
    assert "second line" not in out
    assert "1 ran, 0 reused, 1 failed of 2 jobs" in out
    assert len(list((tmp_path / "records").rglob("*.json"))) == 1


def write_exploding_plugin(site: Path) -> None:
    """A plugin recipe, exposed via a dist-info, that logs its attempts: seed 0 always raises; seed 1
    kills its own worker process on the first attempt and succeeds on the second."""
    pkg = site / "fabench_exploding"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import os
        import signal
        from fabench.recipes.binary import BinaryRecipe
        from fabench.types import Meta

        class Exploding(BinaryRecipe):
            meta = Meta(name="exploding", description="fails", params=dict(BinaryRecipe.meta.params))

            def fit(self, data, params, *, context):
                log = os.environ["EXPLODING_LOG"]
                with open(log, "a") as fh:
                    fh.write(f"seed {context.seed}\\n")
                if context.seed == 0:
                    raise RuntimeError("the exploding recipe exploded")
                if open(log).read().count(f"seed {context.seed}") == 1:
                    os.kill(os.getpid(), signal.SIGKILL)  # the worker dies on the first attempt
                return super().fit(data, params, context=context)
        """))
    info = site / "fabench_exploding-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fabench-exploding\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[fabench.recipes]\nexploding = fabench_exploding:Exploding\n")


def test_on_ray_a_raising_plugin_is_retried_once_and_reported_a_killed_worker_retried_exit_1(tmp_path: Path) -> None:
    site = tmp_path / "site"
    write_exploding_plugin(site)
    log = tmp_path / "attempts.txt"
    path = write(tmp_path / "s.toml", TINY + 'recipes = ["exploding", "binary"]\nseeds = [0, 1]\n')
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "EXPLODING_LOG": str(log), "OMP_NUM_THREADS": "1"}
    env.pop("FABENCH_NO_PLUGINS", None)
    proc = fabench("sweep", str(path), "--jobs", "2", "--quiet", env=env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert out.count("FAILED") == 1 and out.count("RuntimeError: the exploding recipe exploded") == 2  # line + summary
    assert "Traceback" not in out
    assert "3 ran, 0 reused, 1 failed of 4 jobs" in out and "ray (local)" in out
    assert sorted(log.read_text().split("\n")) == ["", "seed 0", "seed 0", "seed 1", "seed 1"]  # each tried twice
    recs = [rec for _, rec in iter_records(tmp_path / "records")]
    assert sorted((r.recipe, r.seed) for r in recs) == [("binary", 0), ("binary", 1), ("exploding", 1)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_sweep_keeps_complete_records_and_a_rerun_runs_only_the_rest(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # jobs of a couple of seconds each, so that the signal sent after the first one lands while
    # others are still running (with instant jobs the sweep could finish first on a fast machine)
    pytest.importorskip("ray")  # --jobs 2 runs on a local Ray
    path = write(tmp_path / "s.toml", TINY.replace("d=64", "d=512").replace("n_test=50", "n_test=1000")
                 + 'recipes = ["binary", "fine"]\nseeds = [0, 1, 2, 3, 4, 5]\n')
    env = {"OMP_NUM_THREADS": "1"}
    proc = fabench("sweep", str(path), "--jobs", "2", "--quiet", env=env)
    assert proc.stdout is not None
    header = proc.stdout.readline()
    assert "12 jobs, 0 finished, 12 to run" in header
    first = proc.stdout.readline()  # the first finished job...
    assert "[1/12] done" in first
    proc.send_signal(sig)  # ...then Ctrl-C (or a batch system's stop) to the driver
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    records = tmp_path / "records"
    files = sorted(records.rglob("*"))
    leftovers = [p for p in files if p.is_file() and p.suffix != ".json"]
    assert not leftovers  # no temporary files
    written = [p for p in files if p.suffix == ".json"]
    for p in written:  # every file is a complete record under its own key
        rec = read_record(p)
        assert p.name.endswith(rec.key[:16] + ".json") and rec.robust_accuracy["worst"]
    n = len(written)
    assert 1 <= n < 12
    stamps = {p: p.stat().st_mtime_ns for p in written}

    rerun = fabench("sweep", str(path), "--jobs", "1", "--quiet", env=env)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert f"12 jobs, {n} finished, {12 - n} to run" in out
    assert f"{12 - n} ran, {n} reused, 0 failed of 12 jobs" in out
    assert out.count(" done ") == 12 - n
    assert len(list(records.rglob("*.json"))) == 12
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished records untouched


def test_dry_run_on_the_leaderboard_sweep_lists_every_published_record_as_finished(capsys) -> None:
    sweep_file = ROOT / "leaderboard" / "sweep.toml"
    published = {rec.key for _, rec in iter_records(ROOT / "leaderboard" / "records")}
    sw = S.load_sweep(sweep_file)
    assert sw.out_dir == ROOT / "leaderboard" / "records"
    n = len(published)
    assert n > 0 and {j.key for j in sw.jobs} == published and len(sw.jobs) == n
    assert all(S.finished(sw))
    code, out, _ = cli(["sweep", str(sweep_file), "--dry-run"], capsys)
    assert code == 0
    assert f"{n} jobs, {n} finished, 0 to run" in out
    lines = [ln for ln in out.splitlines()[1:] if ln.strip()]
    assert len(lines) == n and all(ln.startswith("finished ") for ln in lines)
    assert {ln.split()[1] for ln in lines} == {k[:8] for k in published}
    # deciding that everything is finished neither imports Ray nor computes anything
    check = ("import sys\nfrom fabench import sweep as S\nsw = S.load_sweep(sys.argv[1])\n"
             "print(all(S.finished(sw)), 'ray' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", check, str(sweep_file)], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.split() == ["True", "False"], proc.stderr


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"tasks = [\"synthetic\"\n", "is not valid TOML"),
        (b"tasks = [\"synth\xe9tic\"]\n", "is not UTF-8"),
        (TINY.encode() + b'recipes = ["binary"]\nrecipies = ["fine"]\n', "unknown key 'recipies' (did you mean 'recipes'?)"),
        (TINY.encode() + b'recipes = ["binary"]\n[task.synthetic]\nn_evl = 3\n', "did you mean 'n_eval'?"),
        (TINY.encode() + b'recipes = ["binary"]\n[task.synthtic]\nn_eval = 3\n', "did you mean 'synthetic'?"),
        (TINY.encode() + b'recipes = ["binray"]\n', "did you mean 'binary'"),
        (TINY.encode().replace(b'"synthetic"', b'"synthetc"') + b'recipes = ["binary"]\n', "did you mean 'synthetic'"),
        (TINY.encode().replace(b'"pairwise"', b'"cwx"') + b'recipes = ["binary"]\n', "unknown attack 'cwx'"),
        (TINY.encode() + b'recipes = ["binary"]\nseeds = "a:b"\n', "seeds must be"),
        (TINY.encode() + b'recipes = ["binary"]\nn_eval = -1\n', "n_eval must be an integer >= 0"),
        (TINY.encode() + b'recipes = ["binary"]\ndevice = "gpu"\n', "device must be one of cpu, cuda"),
        (TINY.encode().replace(b'"0:20:2"', b'"0:-2:x"') + b'recipes = ["binary"]\n', "epsilons must be"),
        (TINY.encode() + b'recipes = ["binary"]\nvariants = [["d=big"]]\n', "expected int"),
        (TINY.encode() + b'recipes = ["binary"]\nvariants = [["d"]]\n', "malformed --set"),
        (b'recipes = ["binary"]\n', "missing tasks"),
    ],
)
def test_a_bad_sweep_file_is_one_line_and_exit_2_before_any_job(
    tmp_path: Path, content: bytes, needle: str, capsys
) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    code, out, err = cli(["sweep", str(path)], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("fabench: error: ") and needle in err, err
    assert not (tmp_path / "records").exists()  # nothing ran, nothing was created


def test_task_and_recipe_overrides_and_duplicates(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", TINY + textwrap.dedent("""
        recipes = ["binary", "fine"]
        seeds = "0:2"
        variants = [{ d = 32 }, { d = 64 }]

        [recipe.fine]
        set = ["d=64", "recipe.steps=20"]
        n_eval = 10

        [[grid]]

        [[grid]]
        recipes = ["robust"]
        attacks = ["analytic"]
        epsilons = [0, 5]
        """))
    sw = S.load_sweep(path)
    by = {(j.recipe, j.seed, j.config.overrides): j for j in sw.jobs}
    fine = [j for j in sw.jobs if j.recipe == "fine"]
    # fine's own d=64 wins over both variants: the two variants collapse into one job per seed
    assert len(fine) == 2 and sw.duplicates == 2
    assert all(dict(j.config.overrides)["d"] == "64" and j.config.n_eval == 10 for j in fine)
    assert len([j for j in sw.jobs if j.recipe == "binary"]) == 4
    robust = [j for j in sw.jobs if j.recipe == "robust"]
    assert len(robust) == 4 and all(j.config.attacks == ("analytic",) and j.config.radii == [0.0, 5.0]
                                     for j in robust)
    assert len(by) == len(sw.jobs) == 10


def test_an_unreachable_ray_cluster_is_one_line_exit_2_and_nothing_runs(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write(tmp_path / "s.toml", TINY + 'recipes = ["binary"]\n')
    # a fresh process (this one may hold the module's Ray); RAY_ADDRESS is as good as --ray-address
    proc = fabench("sweep", str(path), env={"RAY_ADDRESS": f"127.0.0.1:{port}"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "1 jobs, 0 finished, 1 to run" in out
    assert err == f"fabench: error: no Ray cluster reachable at 127.0.0.1:{port}: Connection refused\n"
    assert not list((tmp_path / "records").rglob("*.json"))


FUZZ = """
tasks = ["synthetic"]
recipes = ["binary"]
attacks = ["analytic"]
set = ["d=16", "k=4", "n_train=20", "n_test=10", "steps=5"]
"""


@pytest.mark.parametrize(
    "extra, needle",
    [
        ("cpus = inf\n", "cpus must be a number above 0 and at most 1024"),
        ("cpus = 1e308\n", "at most 1024"),
        ('seeds = "0:100000000000"\n', "100,000,000,000 seeds; a sweep may have at most 100,000 jobs"),
        ('seeds = "0:20000000"\n', "at most 100,000 jobs"),
        ("grid = []\n", "grid = [] has no grids"),
        ('epsilons = "0,,1"\n', "epsilons must be"),
    ],
)
def test_sweep_file_values_that_crashed_ray_or_hung_are_refused_up_front(
    tmp_path: Path, extra: str, needle: str, capsys
) -> None:
    path = write(tmp_path / "s.toml", FUZZ + extra)
    code, out, err = cli(["sweep", str(path), "--dry-run"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, err


def test_sweep_job_count_is_capped_across_axes_before_expanding(tmp_path: Path) -> None:
    # 400 seeds x 300 variants = 120 000 jobs: refused by counting, nothing resolved
    variants = "variants = [" + ", ".join(f'["d={16 + i}"]' for i in range(300)) + "]\n"
    path = write(tmp_path / "s.toml", FUZZ + 'seeds = "0:400"\n' + variants)
    with pytest.raises(S.ConfigError, match="more than 100,000 jobs"):
        S.load_sweep(path)


def test_sweep_negative_zero_radius_is_radius_zero(tmp_path: Path) -> None:
    a = S.load_sweep(write(tmp_path / "a.toml", FUZZ + "epsilons = [-0.0, 1]\n"))
    b = S.load_sweep(write(tmp_path / "b.toml", FUZZ + "epsilons = [0, 1]\n"))
    assert a.jobs[0].key == b.jobs[0].key
    assert str(a.jobs[0].config.radii[0]) == "0.0"


def test_sweep_of_finished_records_needs_no_writable_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    path = write(tmp_path / "s.toml", FUZZ + 'epsilons = "0,1,2"\n')
    code, _, err = cli(["sweep", str(path), "--jobs", "1", "-q"], capsys)
    assert code == 0, err
    import fabench.records

    def read_only(out_dir: Path) -> None:
        raise S.ConfigError(f"cannot write results to {str(out_dir)!r}: Read-only file system")

    monkeypatch.setattr(fabench.records, "check_writable", read_only)
    code, out, err = cli(["sweep", str(path), "--jobs", "1", "-q"], capsys)
    assert code == 0 and "0 ran, 1 reused" in out and err == "", (out, err)
    (tmp_path / "records").rename(tmp_path / "old")  # a job to run: now the check applies
    code, _, err = cli(["sweep", str(path), "--jobs", "1", "-q"], capsys)
    assert code == 2 and "Read-only file system" in err


@pytest.mark.parametrize(
    "extra, needle",
    [
        ('out = "a\\u0000b"\n', "out 'a\\x00b' is not a usable path: embedded null byte"),
        (f'out = "{"x" * 5000}"\n', "is not a usable path: File name too long"),
        ('out = "~no-such-user-fz/x"\n', "out '~no-such-user-fz/x' is not a usable path"),
        ('tasks = ["a\\u0000.toml"]\n', "task file 'a\\x00.toml' is not a usable path: embedded null byte"),
        ('epsilons = "0:1e-11:1e-12"\n', "epsilons '0:1e-11:1e-12': radii are kept to 10 decimal places"),
    ],
)
def test_sweep_paths_the_system_refuses_and_collapsing_grids_are_one_line(
    tmp_path: Path, extra: str, needle: str, capsys
) -> None:
    # each was an internal error (a NUL: ValueError; a name too long: OSError mid-walk; ~user: RuntimeError),
    # or a grid silently rounded to the one radius 0
    path = write(tmp_path / "s.toml", extra + FUZZ.replace('tasks = ["synthetic"]\n', "" if "tasks" in extra else
                                                           'tasks = ["synthetic"]\n'))
    code, out, err = cli(["sweep", str(path), "--dry-run"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err and "\0" not in err, err


def test_a_raw_nul_in_a_name_is_printed_escaped(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "s.toml", FUZZ.replace('recipes = ["binary"]', 'recipes = ["bin\\u0000\\u001bary"]'))
    code, out, err = cli(["sweep", str(path), "--dry-run"], capsys)
    assert code == 2 and err.count("\n") == 1 and "(synthetic/bin\\x00\\x1bary)" in err, err
    assert err[:-1].isprintable()  # no raw control character on the terminal
