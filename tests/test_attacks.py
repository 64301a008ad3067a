"""Attacks against handcrafted networks whose minimal adversarial distances are known exactly.

With noiseless data (sigma = 0, x = mu_j) and a network whose neurons are the class-average
features, ``f(x) = ReLU(<S+, x>) - ReLU(<S-, x>)`` with ``S+- = sum_{J+-} mu_j``, the decision flips
iff ``<S+ - S-, rho> <= -d``, so the minimal L2 distance is exactly ``d / ||S+ - S-|| = sqrt(d/k)``.
For one unit per centre (the decoupled net) the pairwise direction flips at exactly ``sqrt(d/2)``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fabench import registry
from fabench.models import BinaryHead, Classifier, RobustHead
from _nets import averaging_net

D, K = 400, 10


@pytest.fixture(scope="module")
def clean_data():
    task = registry.tasks.get("synthetic")
    return task.load({**task.meta.params, "d": D, "n_train": 50, "n_test": 60, "sigma": 0.0}, seed=1)


def decoupled_net(data) -> Classifier:
    """f_robust with threshold sqrt(d)/2 (own activation sqrt(d)/2, the others off).

    Switching the own unit off takes sqrt(d)/2 and leaves g = 0, which counts as an error for
    either label (the decision is strict); the pairwise direction unit(mu_j' - mu_j) reaches the
    boundary at sqrt(2) * sqrt(d)/2 = sqrt(d/2).
    """
    return Classifier(RobustHead(data.features, data.positive_mask, torch.full((K,), math.sqrt(D) / 2)))


def run(name: str, model, data, radii, **over):
    attack = registry.attacks.get(name)
    params = {**attack.meta.params, **over}
    return attack.run(model, data.x_test, data.y_test, radii, data=data, params=params, seed=0)


def test_analytic_finds_the_exact_minimal_distance(clean_data) -> None:
    model = averaging_net(clean_data)
    r = math.sqrt(D / K)
    out = run("analytic", model, clean_data, [0.5 * r, 0.99 * r, 1.01 * r, 2 * r])
    assert torch.allclose(out.distances, torch.full((60,), r), rtol=1e-3)
    assert out.broken.float().mean(1).tolist() == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("name", ["pgd", "deepfool", "pairwise"])
def test_no_attack_reports_a_distance_below_the_true_minimum(clean_data, name: str) -> None:
    model = averaging_net(clean_data)
    r = math.sqrt(D / K)
    out = run(name, model, clean_data, [0.9 * r, 1.5 * r, 3 * r])
    assert float(out.distances.min()) >= r * (1 - 1e-4)
    assert not out.broken[0].any()
    # every reported adversarial example really flips the decision: re-check via distances
    assert torch.equal(out.broken[-1], out.distances <= 3 * r * (1 + 1e-5))


def test_pgd_breaks_the_averaging_net_above_sqrt_2d_over_k(clean_data) -> None:
    # At x the other class's neuron is inactive (zero gradient), so PGD's gradient only sees the
    # own-class neuron and needs sqrt(2d/k) to switch it off (g = 0 is an error), unless its
    # random start activates the other neuron: this is why the protocol runs the analytic attack.
    model = averaging_net(clean_data)
    r = math.sqrt(D / K)
    out = run("pgd", model, clean_data, [0.95 * r, 1.5 * r], steps=100)
    assert out.broken[0].sum() == 0
    assert out.broken[1].float().mean() > 0.95


def test_pairwise_finds_sqrt_d_over_2_on_the_decoupled_net(clean_data) -> None:
    model = decoupled_net(clean_data)
    out = run("pairwise", model, clean_data, [math.sqrt(D / 2)])
    assert torch.allclose(out.distances, torch.full((60,), math.sqrt(D / 2)), rtol=1e-3)
    # the averaged-feature direction is far weaker against it
    far = run("analytic", model, clean_data, [math.sqrt(D / 2)])
    assert float(far.distances.min()) > 1.5 * math.sqrt(D / K)


def test_deepfool_distances_are_minimal_on_the_decoupled_net(clean_data) -> None:
    model = decoupled_net(clean_data)
    out = run("deepfool", model, clean_data, [math.sqrt(D / 2)])
    assert float(out.distances.min()) >= math.sqrt(D) / 2 * (1 - 1e-3)
    assert float(out.distances.median()) <= math.sqrt(D) / 2 * 1.05  # it finds the minimum


def test_line_search_respects_input_bounds(clean_data) -> None:
    from fabench.attacks.analytic import line_search

    model = averaging_net(clean_data)
    x, y = clean_data.x_test[:5], clean_data.y_test[:5]
    u = torch.randn(5, D)
    u = u / u.norm(dim=1, keepdim=True)
    dist = line_search(model, x, y, u, bounds=(-0.1, 0.1), t_max=50.0)
    # clipping x to [-0.1, 0.1] moves it far, so either it flips at some distance or never
    assert torch.all((dist > 0) | torch.isinf(dist))


def reference_line_search(model, x, y, directions, *, t_max, scan_points, bisect_steps):
    """The radius-by-radius scan (one forward pass per scan radius) the batched search replaces."""
    n = len(x)
    lo, hi = torch.zeros(n), torch.full((n,), float("inf"))
    hi[~model.correct(x, y)] = 0.0
    for t in torch.linspace(0, t_max, scan_points + 1)[1:]:
        todo = torch.isinf(hi).nonzero().squeeze(1)
        b = ~model.correct(x[todo] + float(t) * directions[todo], y[todo])
        hi[todo[b]], lo[todo[~b]] = float(t), float(t)
    hit = (torch.isfinite(hi) & (hi > 0)).nonzero().squeeze(1)
    for _ in range(bisect_steps):
        mid = (lo[hit] + hi[hit]) / 2
        b = ~model.correct(x[hit] + mid[:, None] * directions[hit], y[hit])
        hi[hit[b]], lo[hit[~b]] = mid[b], mid[~b]
    return hi


@pytest.mark.parametrize("budget", [50, 400 * 7, 1 << 20])
def test_batched_line_search_equals_the_radius_by_radius_scan(budget: int) -> None:
    from fabench.attacks.analytic import line_search

    task = registry.tasks.get("synthetic")
    data = task.load({**task.meta.params, "d": D, "n_train": 200, "n_test": 120, "sigma": 1.0}, seed=3)
    torch.manual_seed(0)
    model = Classifier(BinaryHead(D, 3, init_std=0.3, bias=True))
    x, y = data.x_test, data.y_test
    u = torch.randn(len(x), D)
    u = u / u.norm(dim=1, keepdim=True)
    ref = reference_line_search(model, x, y, u, t_max=40.0, scan_points=16, bisect_steps=20)
    got = line_search(model, x, y, u, bounds=data.bounds, t_max=40.0, scan_points=16, bisect_steps=20, budget=budget)
    assert torch.isfinite(ref).sum() > 30 and torch.isinf(ref).sum() > 0 and (ref == 0).sum() > 0
    assert torch.equal(torch.isinf(got), torch.isinf(ref))
    fin = torch.isfinite(ref)
    close = torch.isclose(got, ref, rtol=1e-5, atol=40.0 / 16 / 2**20 + 1e-6)
    # Where the two differ, the boundary is flat at float32 round-off: a point whose float64 margin
    # stays within 1e-5 of zero over tens of micro-units of t, so that the batched and the
    # one-by-one passes (other shapes, other kernels: seen with 16 threads on a GPU machine) read
    # its sign differently. Anywhere else they must agree.
    apart = (fin & ~close).nonzero().squeeze(1)
    assert len(apart) <= 2, (got[apart], ref[apart])
    m64 = copy.deepcopy(model).double()
    for i in apart.tolist():
        for t in (float(got[i]), float(ref[i])):
            with torch.no_grad():
                z = m64(x[i : i + 1].double() + t * u[i : i + 1].double())[0]
            assert float((z[1] - z[0]).abs()) < 1e-5, (i, t, z)


@pytest.mark.parametrize("recipe", ["binary", "fine"])
def test_pgd_bisect_is_never_weaker_than_the_grid(recipe: str) -> None:
    """Per-point bisection over the radii (+ walk down) finds at least what one run per radius finds."""
    from fabench.types import FitContext

    task = registry.tasks.get("synthetic")
    data = task.load({**task.meta.params, "d": 300, "n_train": 300, "n_test": 80}, seed=0)
    rec = registry.recipes.get(recipe)
    model = rec.fit(data, dict(rec.meta.params), context=FitContext(seed=0)).eval()
    radii = [float(r) for r in range(0, 25)]
    grid = run("pgd", model, data, radii, search="grid")
    bis = run("pgd", model, data, radii, search="bisect")
    acc_grid, acc_bis = (~grid.broken).float().mean(1), (~bis.broken).float().mean(1)
    assert 0.9 < float(acc_grid[0]) and float(acc_grid[-1]) < 0.1  # the curve crosses the grid
    assert torch.all(acc_bis <= acc_grid), (acc_bis - acc_grid).max()
    assert torch.equal(bis.broken, bis.distances[None, :] <= torch.tensor(radii)[:, None] * (1 + 1e-5))


@pytest.mark.parametrize("recipe", ["binary", "robust"])
def test_deepfool_matches_foolbox_point_by_point(recipe: str) -> None:
    """The torch DeepFool (points leave the batch when done) gives foolbox's iterates: same points
    broken, same distances (up to float round-off), on trained heads where some points need many steps."""
    import foolbox

    from fabench.attacks.foolbox_attacks import _fmodel
    from fabench.attacks.base import is_adversarial, perturbation_norms
    from fabench.types import FitContext

    task = registry.tasks.get("synthetic")
    data = task.load({**task.meta.params, "d": 300, "n_train": 300, "n_test": 120}, seed=0)
    rec = registry.recipes.get(recipe)
    model = rec.fit(data, dict(rec.meta.params), context=FitContext(seed=0)).eval()
    x, y = data.x_test, data.y_test
    attack = foolbox.attacks.L2DeepFoolAttack(steps=100, candidates=2, overshoot=0.02, loss="logits")
    _, ref_adv, _ = attack(_fmodel(model, data), x, foolbox.criteria.Misclassification(y), epsilons=None)
    ok = is_adversarial(model, ref_adv, y)
    ref = torch.where(ok, perturbation_norms(ref_adv, x), torch.tensor(float("inf")))
    got = run("deepfool", model, data, [0.0, 5.0, 10.0]).distances
    assert ok.sum() > 60
    assert torch.equal(torch.isinf(got), torch.isinf(ref))
    fin = torch.isfinite(ref)
    assert torch.allclose(got[fin], ref[fin], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("net", ["binary", "fine", "tiny_cnn"])
def test_l2_pgd_takes_foolboxs_l2pgd_steps(net: str) -> None:
    """fabench's L2 PGD (per-point radii, updated in place) iterates foolbox's ``L2PGD`` from the
    same start: unbounded synthetic heads (trained) and a bounded CNN, where clipping binds."""
    import foolbox

    from fabench.attacks.foolbox_attacks import _fmodel, l2_pgd
    from fabench.types import FitContext

    if net == "tiny_cnn":
        model, x, y, data = tiny_cnn()
        eps = 1.0
    else:
        task = registry.tasks.get("synthetic")
        data = task.load({**task.meta.params, "d": 300, "n_train": 300, "n_test": 120}, seed=0)
        rec = registry.recipes.get(net)
        model = rec.fit(data, dict(rec.meta.params), context=FitContext(seed=0)).eval()
        x, y, eps = data.x_test, data.y_test, 4.0
    attack = foolbox.attacks.L2PGD(steps=30, rel_stepsize=0.05, random_start=False)
    ref, _, _ = attack(_fmodel(model, data), x, foolbox.criteria.Misclassification(y), epsilons=eps)
    got = l2_pgd(model, x, y, torch.full((len(x),), eps), torch.zeros_like(x), steps=30, rel_stepsize=0.05,
                 bounds=data.bounds)
    moved = (ref - x).flatten(1).norm(dim=1)
    assert float(moved.min()) > 0.5 * eps  # every point took real steps
    assert float((got - x).flatten(1).norm(dim=1).max()) <= eps * (1 + 1e-5)
    assert torch.allclose(got, ref, rtol=0, atol=1e-5), (got - ref).abs().max()
    if net == "tiny_cnn":
        assert bool(((got == 0) | (got == 1)).any())  # the bounds were hit, and respected
        assert float(got.min()) >= 0 and float(got.max()) <= 1


def tiny_cnn(n: int = 40):
    """A seeded random conv net on 1 x 12 x 12 images in [0, 1] (labels: its own predictions, so
    every point starts correct) and a data stand-in with the image bounds."""
    from types import SimpleNamespace

    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                       torch.nn.Flatten())
        model = Classifier(BinaryHead(4 * 5 * 5, 8), backbone).eval()
        x = torch.rand(n, 1, 12, 12)
    with torch.no_grad():
        y = (model.margin(x) > 0).long()
    return model, x, y, SimpleNamespace(bounds=(0.0, 1.0))


def test_pgd_curves_are_pinned_on_a_tiny_cnn() -> None:
    """PGD's two searches (driven by fabench.attacks.base's bisect_outcome / fixed_radius_outcome)
    give the curves they gave before the drivers were shared (fixed seed, pinned torch)."""
    model, x, y, data = tiny_cnn()
    pgd = registry.attacks.get("pgd")
    radii = [0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 2.0]
    got = {}
    for search in ("bisect", "grid"):
        out = pgd.run(model, x, y, radii, data=data, params={**pgd.meta.params, "search": search, "steps": 20}, seed=3)
        got[search] = out.broken.sum(1).tolist()
    assert got == PINNED_PGD_COUNTS


PINNED_PGD_COUNTS = {"bisect": [0, 2, 17, 37, 40, 40, 40], "grid": [0, 2, 11, 24, 37, 40, 40]}


def test_apgd_bisect_is_never_weaker_than_its_grid_and_every_claim_is_verified() -> None:
    from fabench.validation import validate_outcome

    model, x, y, data = tiny_cnn()
    apgd = registry.attacks.get("apgd")
    radii = [0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 2.0]
    outs = {}
    for search in ("bisect", "grid"):
        outs[search] = apgd.run(model, x, y, radii, data=data, seed=0,
                                params={**apgd.meta.params, "steps": 20, "restarts": 1, "search": search})
    acc = {s: (~o.broken).float().mean(1) for s, o in outs.items()}
    assert float(acc["grid"][1]) > 0.5 and float(acc["grid"][-1]) < 0.5  # the curve crosses the grid
    assert torch.all(acc["bisect"] <= acc["grid"]), (acc["bisect"] - acc["grid"]).max()
    out = outs["bisect"]
    assert validate_outcome(out, name="apgd", source="test", radii=radii, model=model, x=x, y=y,
                            clean_correct=torch.ones(len(x), dtype=torch.bool), bounds=(0.0, 1.0))
    hit = torch.isfinite(out.distances)
    assert bool((~model.correct(out.adversarials[hit], y[hit])).all())
    assert bool(((out.adversarials[hit] - x[hit]).flatten(1).norm(dim=1) <= out.distances[hit] * (1 + 1e-5)).all())


def test_apgd_skip_solved_claims_nothing_only_where_exact_solves_the_model(clean_data) -> None:
    """The default protocol's ``apgd.skip_solved``: silent on a two-layer head on an unbounded input
    (where ``exact`` gives the ground truth), a real attack through a backbone and on a head of
    pixels in ``[0, 1]`` (where ``exact`` ignores the box: an upper bound only)."""
    from types import SimpleNamespace

    from fabench.attacks.exact import solves

    apgd = registry.attacks.get("apgd")
    exact = registry.attacks.get("exact")
    params = {**apgd.meta.params, "steps": 20, "restarts": 1, "search": "bisect", "skip_solved": True}
    model = averaging_net(clean_data)
    x, y = clean_data.x_test[:40], clean_data.y_test[:40]
    d = math.sqrt(x.shape[1])
    radii = [0.0, 0.5 * d, d, 2 * d]
    skipped = apgd.run(model, x, y, radii, data=clean_data, seed=0, params=params)
    ran = apgd.run(model, x, y, radii, data=clean_data, seed=0, params={**params, "skip_solved": False})
    truth = exact.run(model, x, y, radii, data=clean_data, seed=0, params=dict(exact.meta.params))
    assert not skipped.broken.any() and bool(torch.isinf(skipped.distances).all())
    assert ran.broken[-1].float().mean() > 0.5  # the same attack, run, breaks points here...
    assert torch.all(truth.broken >= ran.broken)  # ...and exact's ground truth every one of them
    cnn, xc, yc, data = tiny_cnn()
    through = apgd.run(cnn, xc, yc, [0.0, 1.0, 2.0], data=data, seed=0, params=params)
    assert through.broken[-1].any()  # a backbone: exact does not solve it, apgd runs
    with torch.random.fork_rng():
        torch.manual_seed(0)
        head = Classifier(BinaryHead(144, 4, init_std=0.1)).eval()
        xp = torch.rand(40, 144)
    with torch.no_grad():
        yp = (head.margin(xp) > 0).long()
    assert solves(head)  # exact takes it, but on pixels the box may bind: apgd runs
    boxed = apgd.run(head, xp, yp, [0.0, 1.0, 2.0], data=SimpleNamespace(bounds=(0.0, 1.0)), seed=0, params=params)
    assert boxed.broken[-1].any()
    unboxed = apgd.run(head, xp, yp, [0.0, 1.0, 2.0], data=SimpleNamespace(bounds=(-math.inf, math.inf)), seed=0,
                       params=params)
    assert not unboxed.broken.any()


def test_apgd_l2_gives_each_point_its_own_radius(clean_data) -> None:
    """pyautoattack's APGD with one radius per point in one call: every candidate lies in its own
    ball; points whose ball is smaller than their exact distance are never broken, points with
    twice their distance mostly are; a warm start at a known adversarial keeps it."""
    from fabench.attacks.autoattack import apgd_l2, unit_box

    model = averaging_net(clean_data)
    x, y = clean_data.x_test[:40], clean_data.y_test[:40]
    r = math.sqrt(D / K)  # every point's exact minimal distance
    eps = torch.where(torch.arange(40) % 2 == 0, torch.tensor(0.9 * r), torch.tensor(2.0 * r))
    box = unit_box(model, x, clean_data, 2.0 * r)
    torch.manual_seed(0)
    adv = apgd_l2(box, x, y, eps, steps=30, restarts=2)
    norms = (adv - x).flatten(1).norm(dim=1)
    assert bool((norms <= eps * (1 + 1e-4)).all())
    broken = ~model.correct(adv, y)
    assert not broken[::2].any() and float(broken[1::2].float().mean()) >= 0.8
    s_plus = clean_data.features[clean_data.positive_mask].sum(0)
    s_minus = clean_data.features[~clean_data.positive_mask].sum(0)
    u = (s_plus - s_minus) / (s_plus - s_minus).norm()
    start = -(y.float() * 2 - 1)[:, None] * u[None, :] * 1.5 * r  # along -y (S+ - S-): past the boundary
    warm = apgd_l2(box, x, y, torch.full((40,), 1.6 * r), steps=1, restarts=0, start=start)
    assert bool((~model.correct(warm, y)).all())
