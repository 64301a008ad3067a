"""A corpus of bad inputs to the ``fabench`` command line, and how each one should end.

Each :class:`Case` is one command line (plus environment) run against a prepared directory
(:func:`prepare`): good and broken records, broken task files, deliberately broken plugins
exposed through a generated ``*.dist-info`` (as ``tests/test_plugins.py`` does). It ends

* ``"error"``: exit status 1 or 2, exactly one line on stderr, and no record written;
* ``"warn"``: exit status 0, exactly one warning line on stderr, the rest still rendered;
* ``"quiet"``: exit status 0 and nothing on stderr (a broken plugin that is not named is not imported).

:func:`classify` sorts an actual run into ``clean`` (as expected), ``traceback``, ``silent``
(exit 0 where an error or a warning was due: a wrong result accepted silently), ``hang``
(killed after the time limit) or ``unclean`` (anything else: several lines, no line, ...).
``python tests/badinputs.py`` runs the whole corpus in subprocesses and prints the counts.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

TINY = ["--task", "synthetic", "--recipe", "binary", "--set", "d=16", "--set", "k=4",
        "--set", "n_train=20", "--set", "n_test=10", "--set", "steps=5", "--epsilons", "0,1,2",
        "--attacks", "analytic", "-q"]


def tiny(*extra: str, attacks: str = "analytic", task: str = "synthetic", recipe: str = "binary") -> list[str]:
    argv = list(TINY)
    argv[argv.index("--attacks") + 1] = attacks
    argv[1], argv[3] = task, recipe
    return ["evaluate", *argv, *extra]


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    expect: str = "error"  # or "warn", "quiet"
    env: dict[str, str] = field(default_factory=dict)
    plugins: str = ""  # "", "bad" or "exit": which generated site is on the path


def _cases() -> list[Case]:
    c: list[Case] = []
    add = lambda id, argv, **kw: c.append(Case(id, argv, **kw))  # noqa: E731
    # -- parameters: impossible sizes and values that switch an attack off -------------------
    for kv in ["d=-1", "d=0", "d=10000000000000", "k=1", "k=0", "k=100000000000", "n_train=-5",
               "n_train=0", "n_test=0", "n_train=1000000000000", "sigma=-1", "sigma=nan", "m=0", "m=-3",
               "steps=-1", "lr=-0.1", "lr=0", "init_std=-1", "optimizer=sgdx", "batch_size=-1", "batch_size=1000000000000",
               "backbone=nonsense", "analytic.scan_points=0", "analytic.scan_points=-4",
               "analytic.max_radius=-1", "analytic.bisect_steps=-1", "positive_classes=0,9"]:
        add(f"set-{kv}", tiny("--set", kv))
    add("set-deepfool.steps=-1", tiny("--set", "deepfool.steps=-1", attacks="deepfool"))
    add("set-deepfool.overshoot=-1", tiny("--set", "deepfool.overshoot=-1", attacks="deepfool"))
    add("set-pgd.steps=0", tiny("--set", "pgd.steps=0", attacks="pgd"))
    add("set-pgd.restarts=-1", tiny("--set", "pgd.restarts=-1", attacks="pgd"))
    add("set-pgd.rel_stepsize=0", tiny("--set", "pgd.rel_stepsize=0", attacks="pgd"))
    # step sizes have finite upper ends too: a mistyped one is refused, not run
    for attack, kv in [("pgd", "rel_stepsize=1e6"), ("surrogate", "rel_stepsize=1e6"), ("deepfool", "overshoot=1e6"),
                       ("fab", "eta=1e6"), ("cw", "stepsize=1e6")]:
        add(f"set-{attack}.{kv}", tiny("--set", f"{attack}.{kv}", attacks=attack))
    add("set-pairwise.scan_points=0", tiny("--set", "pairwise.scan_points=0", attacks="pairwise"))
    # constants past float32 (internal errors deep in the attack before they had an upper end)
    for kv in ["cw.confidence=1e308", "cw.initial_const=1e308", "surrogate.beta_start=1e308",
               "surrogate.beta_end=1e308", "exact.polish_band=1e308"]:
        add(f"set-{kv}", tiny("--set", kv, attacks=kv.partition(".")[0]))
    add("set-fine.h=0", tiny("--set", "h=0", recipe="fine"))
    add("set-robust.bias_fraction=-1", tiny("--set", "bias_fraction=-1", recipe="robust"))
    add("set-robust.centre=x", tiny("--set", "centre=x", recipe="robust"))
    # -- radii and seeds -----------------------------------------------------------------------
    for eps in ["0:1000000:0.001", "0:1e300:1", "1e308", "0,1e300", "nan", "inf", "-1", "0:1:0", "x"]:
        add(f"epsilons-{eps}", tiny("--epsilons", eps))
    for seed in [str(2**63), str(2**64 + 5), "-1"]:
        add(f"seed-{seed}", tiny("--seed", seed))
    add("seeds-huge", tiny("--seeds", f"0,{2**63}"))
    add("n-eval-neg", tiny("--n-eval", "-1"))
    # -- task files ----------------------------------------------------------------------------
    for name in ["params-not-table", "radii-not-table", "params-strings", "radii-strings", "dir",
                 "not-utf8", "name-dotdot", "name-slash", "name-empty", "huge-grid", "radii-huge-stop",
                 "headline-strings", "recipe-defaults-bad"]:
        add(f"taskfile-{name}", tiny(task=f"@TMP/tasks/{name}.toml"))
    add("tasks-path-huge-grid-list", ["list"], expect="warn", env={"FABENCH_TASKS_PATH": "@TMP/badpath"})
    add("tasks-path-huge-grid-evaluate", tiny(), expect="warn", env={"FABENCH_TASKS_PATH": "@TMP/badpath"})
    # -- records among good ones: leaderboard and plot -----------------------------------------
    for name in ["null", "number", "list", "not-utf8", "missing-fields", "future-schema", "bad-types",
                 "not-json"]:
        add(f"leaderboard-record-{name}", ["leaderboard", "--results", f"@TMP/rec-{name}"], expect="warn")
        add(f"plot-record-{name}", ["plot", "--results", f"@TMP/rec-{name}", "--out", f"@TMP/figs-{name}"],
            expect="warn")
    add("leaderboard-out-is-file", ["leaderboard", "--results", "@TMP/rec-good", "--out", "@TMP/afile"])
    add("plot-out-is-file", ["plot", "--results", "@TMP/rec-good", "--out", "@TMP/afile"])
    add("evaluate-out-is-file", tiny("--out", "@TMP/afile"))
    add("leaderboard-format-bad", ["leaderboard", "--results", "@TMP/rec-good", "--format", "xml"])
    # -- records that pass the identity checks (key recomputed, file named after it) but are
    #    malformed or impossible: each one warning, the rest rendered --------------------------
    for name in MUTATIONS:
        add(f"leaderboard-record-{name}", ["leaderboard", "--results", f"@TMP/mut-{name}"], expect="warn")
        add(f"leaderboard-out-record-{name}", ["leaderboard", "--results", f"@TMP/mut-{name}", "--out",
                                               f"@TMP/board-{name}"], expect="warn")
        if name not in PLOT_NEEDS_CLI:
            add(f"plot-record-{name}", ["plot", "--results", f"@TMP/mut-{name}", "--out", f"@TMP/figs-{name}"],
                expect="warn")
    # -- audit: options and records it must refuse before any work -------------------------------
    add("audit-strong-none", ["audit", "@TMP/audit/good.json", "--strong", ",", "-q"])
    for kv in ["fab.steps=-1", "fab.steps=0", "fab.restarts=0"]:
        add(f"audit-strong-set-{kv}", ["audit", "@TMP/audit/good.json", "--strong", "fab", "--strong-set", kv, "-q"])
    add("audit-strong-set-square.p_init=2", ["audit", "@TMP/audit/good.json", "--strong", "square", "--strong-set",
                                             "square.p_init=2", "-q"])
    add("audit-n-eval-neg", ["audit", "@TMP/audit/good.json", "--n-eval", "-1", "-q"])
    for name in AUDIT_MUTATIONS:
        add(f"audit-record-{name}", ["audit", f"@TMP/audit/{name}.json", "--strong", "fab", "-q"])
    add("audit-file-is-a-directory", ["audit", "@TMP/audit/blocked.json", "--strong", "fab", "-q"])
    # -- plugins -------------------------------------------------------------------------------
    for attack in ["bad_shape", "broken_without_distance", "non_monotone", "zero_distance", "nan_distance",
                   "wrong_radii", "false_adversarials", "raises", "int_broken", "distance_not_broken"]:
        add(f"plugin-attack-{attack}", tiny(attacks=f"analytic,{attack}"), plugins="bad")
    add("plugin-recipe-raises", tiny(recipe="raising-recipe"), plugins="bad")
    add("plugin-task-raises", tiny(task="raising-task"), plugins="bad")
    add("plugin-sys-exit-list", ["list"], expect="warn", plugins="exit")
    add("plugin-sys-exit-evaluate", tiny(), expect="quiet", plugins="exit")  # built-ins only: not imported
    # -- data ----------------------------------------------------------------------------------
    add("mnist-unpacked-relabelled", ["evaluate", "--task", "mnist5v5", "--recipe", "robust", "--data-dir",
                                      "@TMP/mnist", "--set", "n_train=100", "--set", "n_test=20",
                                      "--attacks", "analytic", "--epsilons", "0,1", "-q"],
        env={"FABENCH_OFFLINE": "1"})
    # fuzz round, findings 1, 6, 7, 8, 12c: task files with a kind that is no text, a name that cannot be
    # looked up, [recipe_defaults."R@dist"], grids finer than their rounding; sweep paths with a NUL
    for name in FZ_A_TASK_FILES:
        add(f"taskfile-{name}", tiny(task=f"@TMP/fz-a/tasks/{name}.toml"))
    add("tasks-path-kind-list-list", ["list"], expect="warn", env={"FABENCH_TASKS_PATH": "@TMP/fz-a/kindpath"})
    add("tasks-path-kind-list-evaluate", tiny(), expect="warn", env={"FABENCH_TASKS_PATH": "@TMP/fz-a/kindpath"})
    add("tasks-path-name-at-list", ["list"], expect="warn", env={"FABENCH_TASKS_PATH": "@TMP/fz-a/atpath"})
    add("epsilons-0:1e-11:1e-12", tiny("--epsilons", "0:1e-11:1e-12"))
    for name in FZ_A_SWEEPS:
        add(f"sweep-{name}", ["sweep", f"@TMP/fz-a/sweeps/{name}.toml", "--dry-run"])
    # fuzz round, findings 4, 11: --n-eval above the test set (or its bound), a bad --batch-size
    # even where a finished record would be reused
    for n in ["11", "1000", "99999999999999999999999"]:
        add(f"n-eval-{n}", tiny("--n-eval", n))
    add("audit-n-eval-above-test-set", ["audit", "@TMP/audit/good.json", "--n-eval", "11", "--strong", "fab", "-q"])
    for b in ["-1", "99999999999999999999"]:
        add(f"batch-size-{b}-reuse", tiny("--batch-size", b, "--out", "@TMP/good-run"))
    return c


_FZ_A_BASE = 'kind = "synthetic"\n[params]\nd = 16\nk = 4\nn_train = 20\nn_test = 10\n[radii]\nstart = 0.0\nstop = 2.0\nstep = 1.0\n'
FZ_A_TASK_FILES = {
    "kind-list": _FZ_A_BASE.replace('kind = "synthetic"', 'kind = ["synthetic"]'),
    "kind-table": _FZ_A_BASE.replace('kind = "synthetic"', "kind = {a = 1}"),
    "name-at": 'name = "foo@bar"\n' + _FZ_A_BASE,
    "name-dot-toml": 'name = "foo.toml"\n' + _FZ_A_BASE,
    "recipe-defaults-at": _FZ_A_BASE + '[recipe_defaults."binary@fabench"]\nm = 3\n',
    "radii-collapse": _FZ_A_BASE.replace("stop = 2.0\nstep = 1.0", "stop = 1e-11\nstep = 1e-12"),
}
FZ_A_SWEEPS = {
    "out-nul": 'out = "a\\u0000b"\ntasks = ["synthetic"]\nrecipes = ["binary"]\n',
    "task-nul": 'tasks = ["a\\u0000.toml"]\nrecipes = ["binary"]\n',
    "recipe-nul": 'tasks = ["synthetic"]\nrecipes = ["bin\\u0000ary"]\n',
    "out-too-long": f'out = "{"x" * 5000}"\ntasks = ["synthetic"]\nrecipes = ["binary"]\n',
    "out-unknown-user": 'out = "~no-such-user-fz/x"\ntasks = ["synthetic"]\nrecipes = ["binary"]\n',
    "epsilons-collapse": 'tasks = ["synthetic"]\nrecipes = ["binary"]\nepsilons = "0:1e-11:1e-12"\n',
}


def _set(path: str, value: object) -> "Callable[[dict], None]":
    """A change to a record's JSON: the field at the dotted ``path`` set to ``value`` (``KeyError``: deleted)."""
    def change(obj: dict) -> None:
        *parents, last = path.split(".")
        for k in parents:
            obj = obj[k]
        if value is KeyError:
            del obj[last]
        else:
            obj[last] = value
    return change


_NAN, _INF = float("nan"), float("inf")
#: Changes to the good record (seed 1 then, its key recomputed) the leaderboard and plot refuse.
MUTATIONS: dict[str, "Callable[[dict], None]"] = {
    "flags-int": _set("flags", 5), "model-info-list": _set("model_info", [1]),
    "task-params-list": _set("config.task_params", [1]), "config-attacks-list": _set("config.attacks", ["analytic"]),
    "headline-missing": _set("headline_radii", KeyError), "headline-not-a-radius": _set("headline_radii", [55.0]),
    "worst-nan": _set("robust_accuracy.worst.1", _NAN), "worst-inf": _set("robust_accuracy.worst.1", _INF),
    "clean-inf": _set("clean_accuracy", _INF), "fa-nan": _set("fa_score", _NAN),
    "radius-missing": _set("robust_accuracy.worst.2", KeyError), "median-far": _set("median_min_distance", "far"),
    "seed-neg": lambda o: (_set("seed", -1)(o), _set("config.seed", -1)(o)),
    "seed-huge": lambda o: (_set("seed", 10**30)(o), _set("config.seed", 10**30)(o)),
    "seed-float": lambda o: (_set("seed", 1e30)(o), _set("config.seed", 1e30)(o)),
    "cosine-ragged": _set("cosine_matrix.values", [[0.1, 0.2], [0.3]]),
    "big-int": _set("timings.big", "BIGINT"),  # an integer of 5000 digits in the file
    "duplicate-key": _set("clean_accuracy", "DUPLICATE"),
}
#: Record mutations ``fabench plot`` is not run on (none: it reads records as the leaderboard does).
PLOT_NEEDS_CLI: tuple[str, ...] = ()
#: Changes to the good record (key recomputed) the audit refuses before any work.
AUDIT_MUTATIONS: dict[str, "Callable[[dict], None]"] = {
    "steps-huge": _set("config.recipe_params.steps", 10**12), "d-neg": _set("config.task_params.d", -1),
    "unknown-param": _set("config.recipe_params.zzz", 1), "attacks-list": _set("config.attacks", ["analytic"]),
    "schema-99": _set("schema", 99), "worst-nan": _set("robust_accuracy.worst.2", _NAN),
    "worst-neg": _set("robust_accuracy.worst.2", -3), "worst-str": _set("robust_accuracy.worst.2", "0.4"),
    "clean-below-robust": _set("clean_accuracy", 0.1), "seed-neg": lambda o: (_set("seed", -1)(o), _set("config.seed", -1)(o)),
    "protocol-bad": _set("config.protocol", "turbo"), "sources-other": _set("config.sources.task", "elsewhere"),
}


def _mutated_text(good: dict, change: "Callable[[dict], None]", *, seed: int | None = 1) -> tuple[str, str]:
    """``(file name, JSON text)`` of the good record changed by ``change``, its key recomputed."""
    import copy

    from fabench.records import config_key

    obj = copy.deepcopy(good)
    if seed is not None:
        obj["seed"] = obj["config"]["seed"] = seed
    change(obj)
    if isinstance(obj.get("config"), dict):
        obj["key"] = config_key(obj["config"])
    text = json.dumps(obj)
    if obj.get("clean_accuracy") == "DUPLICATE":  # the real value first, a second one that wins
        obj["clean_accuracy"] = good["clean_accuracy"]
        obj["key"] = config_key(obj["config"])
        text = json.dumps(obj)[:-1] + ', "clean_accuracy": 0.5}'
    text = text.replace('"big": "BIGINT"', '"big": ' + "9" * 5000)
    return f"seed{obj.get('seed')}-{str(obj.get('key'))[:16]}.json", text


CASES = _cases()

# fuzz round, findings 2, 3, 12a: records whose configuration values evaluate never writes (key
# recomputed) are left out by leaderboard and plot, refused by audit (before: shown, plotted; a
# configuration without a seed was an internal KeyError in audit); leaderboard --out inside --results.
_CONFIG_VALUES: dict[str, "Callable[[dict], None]"] = {
    "config-seed-missing": _set("config.seed", KeyError), "protocol-missing": _set("config.protocol", KeyError),
    "protocol-null": _set("config.protocol", None), "sources-missing": _set("config.sources", KeyError),
    "sources-empty": _set("config.sources", {}), "task-d-text": _set("config.task_params.d", "x"),
    "task-d-missing": _set("config.task_params.d", KeyError), "recipe-m-neg": _set("config.recipe_params.m", -1),
    "recipe-lr-1e308": _set("config.recipe_params.lr", 1e308),
    "analytic-scan-points-true": _set("config.attacks.analytic.scan_points", True),
}
MUTATIONS.update(_CONFIG_VALUES)
AUDIT_MUTATIONS["config-seed-missing"] = _set("config.seed", KeyError)
for _name in _CONFIG_VALUES:
    CASES += [Case(f"leaderboard-record-{_name}", ["leaderboard", "--results", f"@TMP/mut-{_name}"], expect="warn"),
              Case(f"plot-record-{_name}", ["plot", "--results", f"@TMP/mut-{_name}", "--out", f"@TMP/figs-{_name}"],
                   expect="warn")]
CASES += [Case("audit-record-config-seed-missing", ["audit", "@TMP/audit/config-seed-missing.json", "--strong", "fab", "-q"]),
          Case("leaderboard-out-is-results", ["leaderboard", "--results", "@TMP/rec-good", "--out", "@TMP/rec-good"]),
          Case("leaderboard-out-in-results", ["leaderboard", "--results", "@TMP/rec-good", "--out", "@TMP/rec-good/b"])]

BAD_PLUGIN = '''
from typing import ClassVar
import torch
from fabench.attacks.base import outcome_from_distances
from fabench.types import AttackOutcome, Meta

class _Base:
    minimization: ClassVar[bool] = True
    def __init__(self):
        self.meta = Meta(name=self.NAME, description="deliberately broken", params={})
    def run(self, model, x, y, radii, *, data, params, seed):
        n, R = len(x), len(radii)
        d = torch.full((n,), 0.5)
        return self.make(model, x, y, tuple(float(r) for r in radii), n, R, d)

def _attack(name, make):
    return type(name, (_Base,), {"NAME": name, "make": staticmethod(make)})

bad_shape = _attack("bad_shape", lambda m, x, y, r, n, R, d: AttackOutcome(r, torch.zeros(R + 1, n + 2, dtype=torch.bool), d))
broken_without_distance = _attack("broken_without_distance",
    lambda m, x, y, r, n, R, d: AttackOutcome(r, torch.ones(R, n, dtype=torch.bool), torch.full((n,), float("inf"))))
def _nonmono(m, x, y, r, n, R, d):
    b = torch.zeros(R, n, dtype=torch.bool); b[0] = True
    return AttackOutcome(r, b, torch.zeros(n))
non_monotone = _attack("non_monotone", _nonmono)
zero_distance = _attack("zero_distance", lambda m, x, y, r, n, R, d: outcome_from_distances(r, torch.zeros(n)))
nan_distance = _attack("nan_distance", lambda m, x, y, r, n, R, d: AttackOutcome(r, torch.zeros(R, n, dtype=torch.bool), torch.full((n,), float("nan"))))
wrong_radii = _attack("wrong_radii", lambda m, x, y, r, n, R, d: outcome_from_distances(tuple(v * 2 for v in r), torch.full((n,), float("inf"))))
false_adversarials = _attack("false_adversarials",
    lambda m, x, y, r, n, R, d: AttackOutcome(r, d[None, :] <= torch.tensor(r)[:, None], d, adversarials=x.clone()))
int_broken = _attack("int_broken", lambda m, x, y, r, n, R, d: AttackOutcome(r, torch.zeros(R, n, dtype=torch.int64), torch.full((n,), float("inf"))))
distance_not_broken = _attack("distance_not_broken", lambda m, x, y, r, n, R, d: AttackOutcome(r, torch.zeros(R, n, dtype=torch.bool), torch.full((n,), 0.5)))

class raises(_Base):
    NAME = "raises"
    def run(self, model, x, y, radii, *, data, params, seed):
        raise RuntimeError("boom in run")

class RaisingRecipe:
    meta = Meta(name="raising-recipe", description="raises in fit", params={})
    def fit(self, data, params, *, context):
        raise ValueError("boom in fit")

class RaisingTask:
    meta = Meta(name="raising-task", description="raises in load", params={})
    radii = (0.0, 1.0)
    def load(self, params, *, seed, data_dir=None, progress=None):
        raise KeyError("boom in load")
'''

BAD_ATTACKS = ["bad_shape", "broken_without_distance", "non_monotone", "zero_distance", "nan_distance",
               "wrong_radii", "false_adversarials", "raises", "int_broken", "distance_not_broken"]


def write_dist(site: Path, name: str, groups: dict[str, dict[str, str]], version: str = "0.1") -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items())
    )


def make_good_record(out_dir: Path) -> dict:
    """A finished record of the tiny synthetic configuration (:data:`TINY`), written below ``out_dir``:
    the good record the corpus's broken ones are made from."""
    from fabench.evaluation import RunConfig, evaluate

    rec, _, _ = evaluate(RunConfig(task="synthetic", recipe="binary", attacks=["analytic"], radii=[0, 1, 2],
                                   overrides=[("d", 16), ("k", 4), ("n_train", 20), ("n_test", 10), ("steps", 5)]),
                         out_dir=out_dir)
    return rec.to_json()


def prepare(root: Path, good_record: dict | None = None, *, mnist: bool = True) -> None:
    """Write every file the corpus refers to (``@TMP`` in a case) below ``root``."""
    t = root / "tasks"
    t.mkdir(parents=True)
    base = 'kind = "synthetic"\n'
    radii = '[radii]\nstart = 0.0\nstop = 2.0\nstep = 1.0\n'
    files = {
        "params-not-table": base + 'params = 3\n' + radii,
        "radii-not-table": base + 'radii = "0:2:1"\n',
        "params-strings": base + '[params]\nd = "lots"\n' + radii,
        "radii-strings": base + '[radii]\nstart = "a"\nstop = 2.0\nstep = 1.0\n',
        "name-dotdot": 'name = ".."\n' + base + '[params]\nd = 16\nk = 4\nn_train = 20\nn_test = 10\n' + radii,
        "name-slash": 'name = "../../escaped"\n' + base + '[params]\nd = 16\nk = 4\n' + radii,
        "name-empty": 'name = " "\n' + base + radii,
        "huge-grid": base + '[radii]\nstart = 0.0\nstop = 1000000.0\nstep = 0.001\n',
        "radii-huge-stop": base + '[radii]\nstart = 0.0\nstop = 1e300\nstep = 1e299\n',
        "headline-strings": base + radii + 'headline = ["x"]\n',
        "recipe-defaults-bad": base + 'recipe_defaults = 5\n' + radii,
    }
    for name, text in files.items():
        (t / f"{name}.toml").write_text(text)
    (t / "dir.toml").mkdir()
    (t / "not-utf8.toml").write_bytes(b'kind = "synthetic"\nname = "\xff\xfe"\n')
    bp = root / "badpath"
    bp.mkdir()
    (bp / "huge.toml").write_text(base + '[radii]\nstart = 0.0\nstop = 1000000.0\nstep = 0.001\n')
    (root / "afile").write_text("not a directory\n")
    # records
    if good_record is None:
        good_record = _make_good_record(root)
    bad: dict[str, bytes] = {
        "null": b"null", "number": b"42", "list": b"[1, 2]", "not-utf8": b'{"task": "\xff"}',
        "missing-fields": b'{"task": "synthetic"}', "not-json": b"{",
        "future-schema": json.dumps({**good_record, "schema": 99, "clean_accuracy": 0.0,
                                     "robust_accuracy": {"worst": {k: 0.0 for k in good_record["robust_accuracy"]["worst"]}},
                                     "key": "f" * 64}).encode(),
        "bad-types": json.dumps({**good_record, "robust_accuracy": [1, 2], "radii": "x", "key": "e" * 64}).encode(),
    }
    for name, blob in [("good", None), *bad.items()]:
        d = root / f"rec-{name}" / "synthetic" / "binary"
        d.mkdir(parents=True)
        (d / f"seed0-{good_record['key'][:16]}.json").write_text(json.dumps(good_record))
        if blob is not None:
            (d / "seed1-bad.json").write_bytes(blob)
    for name, change in MUTATIONS.items():
        d = root / f"mut-{name}" / "synthetic" / "binary"
        d.mkdir(parents=True)
        (d / f"seed0-{good_record['key'][:16]}.json").write_text(json.dumps(good_record))
        file_name, text = _mutated_text(good_record, change)
        (d / file_name).write_text(text)
    aud = root / "audit"
    aud.mkdir()
    (aud / "good.json").write_text(json.dumps(good_record))
    for name, change in AUDIT_MUTATIONS.items():
        (aud / f"{name}.json").write_text(_mutated_text(good_record, change, seed=None)[1])
    (aud / "blocked.json").write_text(json.dumps(good_record))
    (aud / "blocked.audit").mkdir()  # where the audit would be written
    # plugins
    site = root / "site-bad"
    site.mkdir()
    (site / "fabench_bad_plugin.py").write_text(BAD_PLUGIN)
    write_dist(site, "fabench-bad-plugin", {
        "fabench.attacks": {a: f"fabench_bad_plugin:{a}" for a in BAD_ATTACKS},
        "fabench.recipes": {"raising-recipe": "fabench_bad_plugin:RaisingRecipe"},
        "fabench.tasks": {"raising-task": "fabench_bad_plugin:RaisingTask"},
    })
    ex = root / "site-exit"
    ex.mkdir()
    (ex / "fabench_exit_plugin.py").write_text("import sys\nsys.exit(3)\n")
    write_dist(ex, "fabench-exit-plugin", {"fabench.recipes": {"exiter": "fabench_exit_plugin:X"}})
    # fuzz round, findings 1, 6, 7, 8, 12c: the files of those cases
    fz = root / "fz-a"
    for sub, files in [("tasks", FZ_A_TASK_FILES), ("sweeps", FZ_A_SWEEPS),
                       ("kindpath", {"k": FZ_A_TASK_FILES["kind-list"]}), ("atpath", {"a": FZ_A_TASK_FILES["name-at"]})]:
        (fz / sub).mkdir(parents=True)
        for name, text in files.items():
            (fz / sub / f"{name}.toml").write_text(text, encoding="utf-8")
    # MNIST: torchvision's unpacked idx files (no .gz) with 3000 training labels changed
    shared = Path(os.environ.get("FABENCH_TEST_DATA", "/work/shared/data")) / "MNIST" / "raw"
    if mnist and shared.is_dir():
        import gzip

        raw = root / "mnist" / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for gz in shared.glob("*.gz"):
            data = bytearray(gzip.decompress(gz.read_bytes()))
            if gz.name.startswith("train-labels"):
                for i in range(8, 8 + 3000):
                    data[i] = (data[i] + 1) % 10
            (raw / gz.name[:-3]).write_bytes(bytes(data))


def _make_good_record(root: Path) -> dict:
    out = root / "good-run"
    env = {**os.environ, "FABENCH_NO_PLUGINS": "1", "OMP_NUM_THREADS": "1"}
    if os.environ.get("CORPUS_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["CORPUS_PYTHONPATH"]
    subprocess.run([sys.executable, "-m", "fabench.cli", *tiny("--out", str(out))], env=env, check=True,
                   capture_output=True, timeout=300, cwd=root)
    (path,) = sorted(out.rglob("*.json"))
    rec: dict = json.loads(path.read_text())
    return rec


def argv_of(case: Case, root: Path) -> list[str]:
    return [a.replace("@TMP", str(root)) for a in case.argv]


def env_of(case: Case, root: Path) -> dict[str, str]:
    env = {k: v.replace("@TMP", str(root)) for k, v in case.env.items()}
    if case.plugins:
        env["PYTHONPATH"] = str(root / f"site-{case.plugins}")
    else:
        env["FABENCH_NO_PLUGINS"] = "1"
    return env


def records_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*.json") if not p.name.startswith(".")} if path.is_dir() else set()


def classify(case: Case, rc: int | None, stderr: str, new_records: int) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if rc is None:
        return "hang"
    if "Traceback" in stderr:
        return "traceback"
    if case.expect == "error":
        if rc == 0:
            return "silent"
        return "clean" if rc in (1, 2) and len(lines) == 1 and new_records == 0 else "unclean"
    if case.expect == "quiet":
        return "clean" if rc == 0 and not lines else "unclean"
    if rc == 0 and len(lines) == 1:
        return "clean"
    return "silent" if rc == 0 and not lines else "unclean"


def run_subprocess(case: Case, root: Path, *, timeout: float = 60) -> tuple[str, str]:
    out = root / "out" / case.id.replace("/", "_")
    argv = argv_of(case, root)
    if argv[0] == "evaluate" and "--out" not in argv:
        argv += ["--out", str(out)]
    # on the CPU: the address-space cap below is far under what CUDA reserves when it initialises
    # (cudaGetDeviceCount then fails with "out of memory"), and the corpus is about inputs
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FABENCH_CACHE": str(root / "cache"), "FABENCH_DEVICE": "cpu",
           **env_of(case, root)}
    if os.environ.get("CORPUS_PYTHONPATH"):  # measure another checkout (e.g. the code before a change)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ["CORPUS_PYTHONPATH"], env.get("PYTHONPATH")]))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    before = records_under(root / "out") | records_under(root.parent)
    try:
        p = subprocess.run([sys.executable, "-m", "fabench.cli", *argv], capture_output=True, text=True,
                           env=env, timeout=timeout, preexec_fn=limit, cwd=root)
        rc, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, err = None, (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    new = len((records_under(root / "out") | records_under(root.parent)) - before)
    # a record written outside the corpus directory (a task name escaping --out) counts too
    return classify(case, rc, err, new), err


def main() -> None:
    only = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        root.mkdir()
        prepare(root)
        counts: Counter[str] = Counter()
        for case in CASES:
            if only and not any(o in case.id for o in only):
                continue
            kind, err = run_subprocess(case, root)
            counts[kind] += 1
            last = (err.strip().splitlines() or [""])[-1][:150]
            print(f"{kind:10s} {case.id:40s} {last}", flush=True)
        print(f"{sum(counts.values())} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()


def run_inprocess(case: Case, root: Path) -> tuple[str, str]:
    """Run ``case`` through :func:`fabench.cli.main` in this process (environment and ``sys.path``
    set for it and restored after); an exception escaping ``main`` counts as a traceback."""
    import contextlib
    import io
    import traceback

    from fabench import registry
    from fabench.cli import main as cli_main

    out = root / "out" / case.id.replace("/", "_")
    argv = argv_of(case, root)
    if argv[0] == "evaluate" and "--out" not in argv:
        argv += ["--out", str(out)]
    env = {"FABENCH_CACHE": str(root / "cache"), **env_of(case, root)}
    pythonpath = env.pop("PYTHONPATH", None)
    saved_env = {k: os.environ.get(k) for k in [*env, "FABENCH_NO_PLUGINS"]}
    saved_path = list(sys.path)
    saved_modules = set(sys.modules)
    os.environ.pop("FABENCH_NO_PLUGINS", None)
    os.environ.update(env)
    if pythonpath:
        sys.path.insert(0, pythonpath)
    err = io.StringIO()
    before = records_under(root)
    rc: int | None
    try:
        for reg in registry.REGISTRIES.values():  # discovered again inside main, as in a fresh process
            reg._entries = {n: kept for n, es in reg._entries.items()
                            if (kept := [e for e in es if e.source == registry.BUILTIN_SOURCE])}
            reg._loaded = False
        with contextlib.redirect_stderr(err):
            try:
                rc = cli_main(argv, out=io.StringIO())
            except BaseException:  # noqa: BLE001 - what escapes main is the finding
                err.write(traceback.format_exc())
                rc = 99
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sys.path[:] = saved_path
        for m in set(sys.modules) - saved_modules:
            if m.startswith(("fabench_bad", "fabench_exit")):
                del sys.modules[m]
        for reg in registry.REGISTRIES.values():
            reg.reload()
    new = len(records_under(root) - before)
    return classify(case, rc, err.getvalue(), new), err.getvalue()
