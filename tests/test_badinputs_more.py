"""More bad inputs (found by fuzzing the command line, task files and sweep files), run like the
corpus of tests/badinputs.py: each ends in one stderr line, the right exit status and no record."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import badinputs  # noqa: E402
from badinputs import Case, tiny  # noqa: E402

BASE = 'kind = "synthetic"\n[params]\nd = 16\nk = 4\nn_train = 20\nn_test = 10\n[radii]\nstart = 0.0\nstop = 2.0\nstep = 1.0\n'
TASK_FILES = {
    "unknown-key": "colour = 3\n" + BASE,
    "radii-extra": BASE + "foo = 1\n",
    "radii-bool": BASE.replace("start = 0.0\nstop = 2.0\nstep = 1.0", "start = false\nstop = true\nstep = true"),
    "headline-nan": BASE + "headline = [nan]\n",
    "headline-neg": BASE + "headline = [-1]\n",
    "headline-off-grid": BASE + "headline = [0.5, 7]\n",
    "description-table": "description = {a = 1}\n" + BASE,
    "name-newline": 'name = "a\\nb"\n' + BASE,
    "name-long": f'name = "{"a" * 300}"\n' + BASE,
    "recipe-defaults-unknown": BASE + "[recipe_defaults.nonexist]\nm = 3\n",
}
SWEEP = ('tasks = ["synthetic"]\nrecipes = ["binary"]\nattacks = ["analytic"]\nepsilons = "0,1,2"\n'
         'set = ["d=16", "k=4", "n_train=20", "n_test=10", "steps=5"]\n')
SWEEP_FILES = {"cpus-inf": "cpus = inf\n", "cpus-huge": "cpus = 1e308\n", "seeds-20M": 'seeds = "0:20000000"\n',
               "seeds-1e11": 'seeds = "0:100000000000"\n', "grid-empty": "grid = []\n"}
#: A good sweep whose one job is the corpus's good record (finished): nothing to run, options still checked.
FINISHED_SWEEP = SWEEP + 'out = "../good-run"\n'
AUDIT_GOOD = ["audit", "@TMP/audit/good.json", "--strong", "fab", "--strong-set", "fab.steps=1", "-q"]


def _cases() -> list[Case]:
    c: list[Case] = []
    add = lambda id, argv, **kw: c.append(Case(id, argv, **kw))  # noqa: E731
    for threads in ["1000", "5000", "20000", "65536", "99999999999999999999", str(2**64)]:
        add(f"threads-{threads}", tiny("--threads", threads))
    add("device-tpu-reuse", tiny("--device", "tpu", "--out", "@TMP/good-run"))
    add("env-device-tpu-reuse", tiny("--out", "@TMP/good-run"), env={"FABENCH_DEVICE": "tpu"})
    add("threads-2**64-reuse", tiny("--threads", str(2**64), "--out", "@TMP/good-run"))
    for eps in ["0,,1", " ", ""]:
        add(f"epsilons-empty-item-{eps!r}", tiny("--epsilons", eps))
    add("seeds-empty-item", tiny("--seeds", "0,,1"))
    add("seed-0-with-seeds", tiny("--seed", "0", "--seeds", "1"))  # an explicit --seed 0 is a seed given
    add("set-positive_classes=0,0", tiny("--set", "positive_classes=0,0"))
    add("set-lr=1e308", tiny("--set", "lr=1e308"))
    add("set-sigma=1e308", tiny("--set", "sigma=1e308"))
    add("set-init_std=1e308", tiny("--set", "init_std=1e308"))
    for name in TASK_FILES:
        add(f"taskfile-{name}", tiny(task=f"@TMP/more-tasks/{name}.toml"),
            expect="warn" if name == "recipe-defaults-unknown" else "error")
    add("plot-dir-file", tiny("--plot", "--plot-dir", "@TMP/afile"))
    add("plot-dir-proc", tiny("--plot", "--plot-dir", "/proc/x"))
    add("cache-dir-file", tiny("--cache-dir", "@TMP/afile"))
    for name in SWEEP_FILES:
        add(f"sweep-{name}", ["sweep", f"@TMP/more-sweeps/{name}.toml", "--dry-run"])
    for jobs in ["0", "9", "99999999999999999999"]:  # 9: above 4 x the 2 CPUs (os.cpu_count patched below)
        add(f"sweep-jobs-{jobs}", ["sweep", "@TMP/more-sweeps/finished.toml", "--jobs", jobs, "-q"])
        add(f"sweep-jobs-{jobs}-dry-run", ["sweep", "@TMP/more-sweeps/finished.toml", "--jobs", jobs, "--dry-run"])
    add("sweep-jobs-200000-cluster", ["sweep", "@TMP/more-sweeps/finished.toml", "--jobs", "200000", "--ray-address",
                                      "127.0.0.1:1", "--dry-run"])
    # audit: a record file and an option that describes a record, even at its default value
    add("audit-seed-0-with-record", AUDIT_GOOD + ["--seed", "0"])
    add("audit-record-n-eval-0-with-record", AUDIT_GOOD + ["--record-n-eval", "0"])
    return c


CASES = _cases()


def _prepare_more(root: Path) -> None:
    (root / "more-tasks").mkdir()
    for name, text in TASK_FILES.items():
        (root / "more-tasks" / f"{name}.toml").write_text(text, encoding="utf-8")
    (root / "more-sweeps").mkdir()
    for name, text in SWEEP_FILES.items():
        (root / "more-sweeps" / f"{name}.toml").write_text(SWEEP + text, encoding="utf-8")
    (root / "more-sweeps" / "finished.toml").write_text(FINISHED_SWEEP, encoding="utf-8")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus-more")
    badinputs.prepare(root, badinputs.make_good_record(root / "good-run"), mnist=False)
    _prepare_more(root)
    return root


def test_case_ids_are_new_and_distinct() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and not set(ids) & {c.id for c in badinputs.CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_more_bad_input_in_process(case: Case, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # the --threads and --jobs bounds do not depend on the machine
    kind, err = badinputs.run_inprocess(case, corpus)
    assert kind == "clean", err
    assert case.expect != "error" or err.startswith("fabench: error: "), err  # a bad input: exit status 2


@pytest.mark.parametrize("case_id", ["threads-65536", "env-device-tpu-reuse", "sweep-seeds-1e11",
                                     "sweep-jobs-99999999999999999999", "audit-seed-0-with-record"])
def test_more_bad_input_subprocess(case_id: str, corpus: Path) -> None:
    (case,) = [c for c in CASES if c.id == case_id]
    kind, err = badinputs.run_subprocess(case, corpus, timeout=120)
    assert kind == "clean", err
