"""The protocol: worst case, clean errors, monotone curves, seeded point selection."""

from __future__ import annotations

import math

import pytest
import torch

from fabench import registry
from fabench.errors import ConfigError
from fabench.models import Classifier, RobustHead
from fabench.protocol import MAX_N_EVAL, AttackSpec, check_n_eval, check_radii, run_protocol, select_points


@pytest.fixture(scope="module")
def data():
    task = registry.tasks.get("synthetic")
    return task.load({**task.meta.params, "d": 200, "n_train": 50, "n_test": 100, "sigma": 0.3}, seed=2)


def specs(*names: str) -> list[AttackSpec]:
    return [AttackSpec(n, registry.attacks.get(n), dict(registry.attacks.get(n).meta.params)) for n in names]


def test_clean_errors_count_as_broken_at_every_radius(data) -> None:
    wrong_mask = data.positive_mask.clone()
    wrong_mask[0] = ~wrong_mask[0]  # cluster 0 gets the wrong sign: its points are misclassified
    model = Classifier(RobustHead(data.features, wrong_mask, torch.full((10,), 5.0)))
    res = run_protocol(model, data, specs("analytic", "deepfool"), radii=[0, 1, 2], seed=0)
    frac0 = float((data.fine_test == 0).float().mean())
    assert res.clean_accuracy == pytest.approx(1 - frac0)
    for a in ("analytic", "deepfool", "worst"):
        assert res.robust_accuracy(a)[0.0] == pytest.approx(1 - frac0)
    assert torch.all(res.min_distance[data.fine_test == 0] == 0)


def test_worst_case_is_per_point_union(data) -> None:
    # f_robust: pairwise flips at sqrt(d/2) = 10, the averaged-feature direction needs ~22
    model = Classifier(RobustHead(data.features, data.positive_mask, torch.full((10,), math.sqrt(200) / 2)))
    r = math.sqrt(200 / 2)
    res = run_protocol(model, data, specs("analytic", "pairwise", "pgd"), radii=[0, 0.5 * r, 1.2 * r, 3 * r],
                       seed=0, batch_size=37)
    union = torch.zeros_like(res.worst_broken)
    for o in res.outcomes.values():
        union |= o.broken
    assert torch.equal(res.worst_broken, union)
    for a in res.outcomes:
        assert all(res.robust_accuracy("worst")[r_] <= v for r_, v in res.robust_accuracy(a).items())
    assert res.robust_accuracy("worst")[1.2 * r] < 0.5 < res.robust_accuracy("analytic")[1.2 * r]
    assert res.robust_accuracy("worst")[3 * r] == 0.0


def test_point_selection_is_seeded_subset() -> None:
    a, b, c = select_points(1000, 100, 5), select_points(1000, 100, 5), select_points(1000, 100, 6)
    assert torch.equal(a, b) and not torch.equal(a, c) and len(a) == 100 and len(set(a.tolist())) == 100
    assert torch.equal(select_points(50, 0, 1), torch.arange(50))
    assert torch.equal(select_points(50, 50, 1), torch.arange(50))
    # more than the test set would be all of it under a second key (evaluate and audit both reach this)
    with pytest.raises(ConfigError, match="--n-eval 80 but the test set holds 50 points"):
        select_points(50, 80, 1)


@pytest.mark.parametrize("bad", [-1, True, "3", 1.5, None, MAX_N_EVAL + 1, 10**23])
def test_n_eval_is_an_integer_in_its_range(bad) -> None:
    with pytest.raises(ConfigError, match="expected an integer from 0"):
        check_n_eval(bad)
    assert check_n_eval(0) == 0 and check_n_eval(MAX_N_EVAL) == MAX_N_EVAL and check_n_eval(7, n_test=7) == 7


@pytest.mark.parametrize("bad,needle", [("0,1,2", "a sequence of numbers"), (5, "a sequence of numbers"),
                                        (None, "a sequence of numbers"), ([None], "must be numbers"),
                                        (["1"], "must be numbers"), ([True], "must be numbers"),
                                        ([10**400], "at most 1e\\+09")])
def test_radii_that_are_not_a_sequence_of_real_numbers_are_config_errors(bad, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        check_radii(bad)


@pytest.mark.parametrize("bad", [[-1.0], [float("nan")], [float("inf")], []])
def test_bad_radii_are_config_errors(bad) -> None:
    with pytest.raises(ConfigError):
        check_radii(bad)


def test_radii_sorted_and_deduplicated() -> None:
    assert check_radii([3, 1, 1, 0]) == (0.0, 1.0, 3.0)


@pytest.mark.parametrize("recipe", ["binary", "fine"])
def test_fast_mode_worst_case_is_never_above_full(data, recipe: str) -> None:
    from fabench.types import FitContext

    rec = registry.recipes.get(recipe)
    model = rec.fit(data, dict(rec.meta.params), context=FitContext(seed=0)).eval()
    radii = [float(r) for r in range(0, 21, 2)]
    # deterministic attacks: the fast worst case is never above the full one
    det = ("analytic", "pairwise", "deepfool")
    full = run_protocol(model, data, specs(*det), radii=radii, seed=0, batch_size=40)
    fast = run_protocol(model, data, specs(*det), radii=radii, seed=0, batch_size=40, mode="fast")
    assert (full.mode, fast.mode) == ("full", "fast")
    acc_full, acc_fast = full.robust_accuracy(), fast.robust_accuracy()
    assert acc_full[0.0] > 0.9 and acc_full[20.0] < 0.1  # the curve crosses the grid
    assert all(acc_fast[r] <= acc_full[r] for r in radii), (acc_fast, acc_full)
    # with PGD (random starts, batch-dependent draws) a borderline point may fall either way: a
    # few points of 100, never a systematic gap
    names = ("analytic", "pairwise", "pgd", "deepfool")
    full = run_protocol(model, data, specs(*names), radii=radii, seed=0, batch_size=40)
    fast = run_protocol(model, data, specs(*names), radii=radii, seed=0, batch_size=40, mode="fast")
    acc_full, acc_fast = full.robust_accuracy(), fast.robust_accuracy()
    assert all(acc_fast[r] <= acc_full[r] + 0.03 for r in radii), (acc_fast, acc_full)
    assert sum(acc_fast.values()) <= sum(acc_full.values()) + 0.05
    # the worst case is the last attack's cumulative curve; every outcome is monotone and consistent
    assert torch.equal(fast.outcomes["pgd"].broken, fast.worst_broken)
    for o in fast.outcomes.values():
        assert not (o.broken[:-1] & ~o.broken[1:]).any()
        assert torch.all(o.distances[o.broken[-1] & fast.clean_correct] <= 20.0 * (1 + 1e-5))
    assert list(fast.outcomes) == list(names) and full.clean_accuracy == fast.clean_accuracy


def test_unknown_protocol_mode_is_a_config_error(data) -> None:
    model = Classifier(RobustHead(data.features, data.positive_mask, torch.full((10,), 5.0)))
    with pytest.raises(ConfigError, match="mode"):
        run_protocol(model, data, specs("analytic"), radii=[0, 1], mode="quick")


class _Spy:
    """A fixed-epsilon attack that records what the protocol gives it."""

    minimization = False

    def __init__(self, name: str) -> None:
        self.inner = registry.attacks.get(name)
        self.meta = self.inner.meta
        self.calls: list[tuple[torch.Tensor, tuple[float, ...]]] = []

    def run(self, model, x, y, radii, **kw):
        self.calls.append((x.clone(), tuple(radii)))
        return self.inner.run(model, x, y, radii, **kw)


def test_fast_mode_closes_certified_points(data) -> None:
    """Fast mode gives the fixed-epsilon attacks no radius a point is certified robust at: on
    f_robust (exact distances tight) almost nothing is left for PGD, and the worst case is full's."""
    from fabench.certify import certify

    model = Classifier(RobustHead(data.features, data.positive_mask, torch.full((10,), math.sqrt(200) / 2)))
    radii = [float(r) for r in range(0, 31, 2)]

    def run(mode: str) -> tuple:
        spy = _Spy("pgd")
        attacks = specs("analytic", "exact") + [AttackSpec("pgd", spy, dict(spy.meta.params))]
        return run_protocol(model, data, attacks, radii=radii, seed=0, batch_size=40, mode=mode), spy

    (full, _), (fast, spy) = run("full"), run("fast")
    assert torch.equal(fast.worst_broken, full.worst_broken)
    cells = 0
    for x, rad in spy.calls:
        cert = certify(model, x, _labels(data, x), max_radius=2 * max(radii)).radius
        assert all(bool((r * (1 + 1e-3) >= cert).all()) for r in rad)  # never inside a certified ball
        cells += len(x) * len(rad)
    assert cells <= 0.05 * len(radii) * len(data.x_test), cells  # full mode: every cell


def _labels(data, x: torch.Tensor) -> torch.Tensor:
    """The labels of test points given by their rows."""
    match = (x[:, None, :] == data.x_test[None, :, :]).all(-1).float().argmax(1)
    return data.y_test[match]


def test_fast_mode_walks_down_from_where_the_earlier_attacks_broke_a_point(data) -> None:
    """A point the earlier attacks broke first at ``r_i`` is given ``(r_{i-1}, r_i)`` only (and the
    next pair down only where that broke it lower): a few cells per point, not the whole band."""
    from fabench.types import FitContext

    rec = registry.recipes.get("binary")
    model = rec.fit(data, dict(rec.meta.params), context=FitContext(seed=0)).eval()
    radii = [float(r) for r in range(0, 21, 2)]
    before = run_protocol(model, data, specs("analytic", "deepfool"), radii=radii, seed=0, batch_size=40, mode="fast")
    first = len(radii) - before.worst_broken.sum(dim=0)  # per point: index of the first broken radius
    spy = _Spy("pgd")
    fast = run_protocol(model, data, specs("analytic", "deepfool") + [AttackSpec("pgd", spy, dict(spy.meta.params))],
                        radii=radii, seed=0, batch_size=40, mode="fast")
    walked, cells = 0, 0
    for xb, rad in spy.calls:
        rows = (xb[:, None, :] == data.x_test[None, :, :]).all(-1).float().argmax(1)
        cells += len(xb) * len(rad)
        if len(rad) == 2:  # a walk-down pair: consecutive radii, at or below the earlier first break
            i = radii.index(rad[1])
            assert radii[i - 1] == rad[0]
            assert bool((i <= first[rows]).all()) and bool((first[rows] < len(radii)).all())
            walked += len(xb)
        else:  # a point no earlier attack broke anywhere: its open radii up to the top
            assert rad[-1] == radii[-1] and bool((first[rows] == len(radii)).all())
    # every point broken inside the grid with an open (not certified) radius below its break was asked
    from fabench.protocol import _certified_cells

    low = _certified_cells(model, data.x_test, data.y_test, tuple(radii), torch.arange(len(data.x_test)), 40).sum(0)
    to_walk = int(((first < len(radii)) & (first > low) & before.clean_correct).sum())
    assert walked >= to_walk > 10, (walked, to_walk)
    assert cells <= 0.4 * len(radii) * len(data.x_test), cells
    assert torch.all(fast.worst_broken >= before.worst_broken)


class _BandSpy(_Spy):
    """A fixed-epsilon attack that takes per-point bands (see :class:`fabench.attacks.base.Bands`)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.bands: list = []

    def searches_bands(self, params) -> bool:
        return self.inner.searches_bands(params)

    def run(self, model, x, y, radii, bands=None, **kw):
        self.calls.append((x.clone(), tuple(radii)))
        self.bands.append(bands)
        return self.inner.run(model, x, y, radii, bands=bands, **kw)


def _probe_recorder(monkeypatch) -> list:
    """Every PGD probe: (points, per-point radii)."""
    import fabench.attacks.foolbox_attacks as fa

    probes, inner = [], fa.l2_pgd

    def l2_pgd(model, x0, y, eps, start, **kw):
        probes.append((x0.clone(), eps.clone()))
        return inner(model, x0, y, eps, start, **kw)

    monkeypatch.setattr(fa, "l2_pgd", l2_pgd)
    return probes


def test_fast_mode_gives_a_banded_attack_every_point_in_one_call_and_never_probes_a_certified_ball(
        data, monkeypatch) -> None:
    """An attack that takes bands (pgd's bisection) gets every open point in one call per batch,
    each with its own band, and probes no radius a point is certified robust at."""
    from fabench.certify import certify

    model = Classifier(RobustHead(data.features, data.positive_mask, torch.full((10,), math.sqrt(200) / 2)))
    radii = [float(r) for r in range(0, 31, 2)]
    spy = _BandSpy("pgd")
    attacks = specs("analytic", "exact") + [AttackSpec("pgd", spy, dict(spy.meta.params))]
    full = run_protocol(model, data, attacks, radii=radii, seed=0, batch_size=40, mode="full")
    spy.calls.clear(), spy.bands.clear()
    probes = _probe_recorder(monkeypatch)
    fast = run_protocol(model, data, attacks, radii=radii, seed=0, batch_size=40, mode="fast")
    assert torch.equal(fast.worst_broken, full.worst_broken)
    assert all(rad == tuple(radii) for _, rad in spy.calls) and all(b is not None for b in spy.bands)
    assert len(spy.calls) == math.ceil(sum(len(x) for x, _ in spy.calls) / 40)  # full batches, not groups
    cells = 0
    for x, eps in probes:
        cert = certify(model, x, _labels(data, x), max_radius=2 * max(radii)).radius
        assert bool((eps.double() * (1 + 1e-3) >= cert).all()), (eps, cert)  # never inside a certified ball
        cells += len(x)
    assert cells <= 0.05 * len(radii) * len(data.x_test), cells


def test_fast_mode_bands_walk_down_from_where_the_earlier_attacks_broke_a_point(data, monkeypatch) -> None:
    """With bands, a point the earlier attacks broke first at ``r_i`` gets the band ``(r_{i-1}, r_i)``
    (its search probes ``r_i``, then walks down while it succeeds); a point broken nowhere gets its
    open radii up to the top. A few probes per point, and never weaker than the earlier attacks."""
    from fabench.types import FitContext

    rec = registry.recipes.get("binary")
    model = rec.fit(data, dict(rec.meta.params), context=FitContext(seed=0)).eval()
    radii = [float(r) for r in range(0, 21, 2)]
    before = run_protocol(model, data, specs("analytic", "deepfool"), radii=radii, seed=0, batch_size=40, mode="fast")
    first = len(radii) - before.worst_broken.sum(dim=0)
    spy = _BandSpy("pgd")
    probes = _probe_recorder(monkeypatch)
    fast = run_protocol(model, data, specs("analytic", "deepfool") + [AttackSpec("pgd", spy, dict(spy.meta.params))],
                        radii=radii, seed=0, batch_size=40, mode="fast")
    walked = 0
    for (xb, _), bands in zip(spy.calls, spy.bands):
        rows = (xb[:, None, :] == data.x_test[None, :, :]).all(-1).float().argmax(1)
        broke = first[rows] < len(radii)
        assert torch.equal(bands.first[broke], first[rows][broke] - 1)
        assert torch.equal(bands.end[broke], first[rows][broke] + 1)
        assert bool((bands.end[~broke] == len(radii)).all()) and bool((bands.floor <= bands.first).all())
        walked += int(broke.sum())
    assert walked > 10
    assert sum(len(x) for x, _ in probes) <= 0.4 * len(radii) * len(data.x_test)
    assert torch.all(fast.worst_broken >= before.worst_broken)
