"""The ``exact`` attack against brute force on tiny networks, and against the paper's radii.

Brute force: every activation region of a tiny two-layer head (d <= 8) is solved on its own with
scipy's SLSQP from several starts (minimise ``|z - x|^2`` subject to the region's sign pattern and
the adversarial condition evaluated by the true margin), and the minimum is taken.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from fabench.attacks.exact import exact_distances
from fabench.errors import ConfigError
from fabench.models import BinaryHead, Classifier, FineHead, RobustHead


def brute_force(margin_fn, w: np.ndarray, b: np.ndarray, x: np.ndarray, sign: int, starts: int = 3) -> float:
    """min |z - x| over every region S of {s g(z) <= 0}, each region by SLSQP from several starts.

    ``margin_fn(z, pattern)`` is the margin on region ``pattern`` (with its gradient), equal to the
    true margin inside the region.
    """
    rng = np.random.default_rng(0)
    best = math.inf
    for pattern in itertools.product([0, 1], repeat=len(b)):
        on = np.array(pattern, dtype=float)
        sig = 2 * on - 1
        cons = [
            {"type": "ineq", "fun": lambda z, sig=sig: sig * (w @ z + b), "jac": lambda z, sig=sig: sig[:, None] * w},
            {"type": "ineq", "fun": lambda z, on=on: np.array([-sign * margin_fn(z, on)[0]]),
             "jac": lambda z, on=on: -sign * margin_fn(z, on)[1][None, :]},
        ]
        for _ in range(starts):
            z0 = x + rng.normal(scale=1.0, size=x.shape)
            res = minimize(lambda z: float(np.sum((z - x) ** 2)), z0, jac=lambda z: 2 * (z - x),
                           constraints=cons, method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000})
            z = res.x
            if np.all(sig * (w @ z + b) >= -1e-9) and sign * margin_fn(z, on)[0] <= 1e-9:
                best = min(best, float(np.linalg.norm(z - x)))
    return best


def affine_margin(w: np.ndarray, b: np.ndarray, a: np.ndarray):
    def fn(z: np.ndarray, on: np.ndarray) -> tuple[float, np.ndarray]:
        return float((a * on) @ (w @ z + b)), (a * on) @ w
    return fn


def fine_margin(w: np.ndarray, b: np.ndarray, positive: np.ndarray):
    def fn(z: np.ndarray, on: np.ndarray) -> tuple[float, np.ndarray]:
        f = on * (w @ z + b)
        df = on[:, None] * w

        def lse(idx: np.ndarray) -> tuple[float, np.ndarray]:
            v = f[idx]
            mx = v.max()
            e = np.exp(v - mx)
            return mx + math.log(e.sum()), (e / e.sum()) @ df[idx]

        lp, gp = lse(positive)
        ln, gn = lse(~positive)
        return lp - ln, gp - gn
    return fn


def tiny_binary(d: int, m: int, seed: int) -> Classifier:
    g = torch.Generator().manual_seed(seed)
    head = BinaryHead(d, m, init_std=1.0, generator=g).double()
    return Classifier(head)


def _points(model: Classifier, d: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = (model.margin(x) > 0).long()  # label = the model's decision: every point correct
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])  # seed 2: a minimiser on a region without interior
def test_exact_matches_brute_force_on_tiny_binary_heads(seed: int) -> None:
    d, m = 4, 2
    model = tiny_binary(d, m, seed)
    x, y = _points(model, d, 5, seed + 10)
    res = exact_distances(model, x, y)
    w = model.head.weight.detach().reshape(2 * m, d).numpy()
    b = model.head.bias.detach().reshape(2 * m).numpy()
    for i in range(len(x)):
        a = np.concatenate([np.full(m, 1.0 / m), np.full(m, -1.0 / m)])
        bf = brute_force(affine_margin(w, b, a), w, b, x[i].numpy(), int(y[i]) * 2 - 1)
        assert bool(res.exact[i])
        assert res.upper[i].item() == pytest.approx(bf, abs=1e-5, rel=1e-5)
        assert res.lower[i].item() <= bf + 1e-6


def test_exact_brackets_brute_force_on_a_tiny_fine_head() -> None:
    d, k = 4, 4
    g = torch.Generator().manual_seed(3)
    head = FineHead(d, k, 1, torch.tensor([True, True, False, False]), init_std=1.0, bias=True, generator=g).double()
    model = Classifier(head)
    x, y = _points(model, d, 4, 7)
    res = exact_distances(model, x, y)
    w = head.weight.detach().reshape(k, d).numpy()
    b = head.bias.detach().reshape(k).numpy()
    for i in range(len(x)):
        bf = brute_force(fine_margin(w, b, np.array([True, True, False, False])), w, b, x[i].numpy(),
                         int(y[i]) * 2 - 1)
        assert res.lower[i].item() <= bf + 1e-6
        assert res.upper[i].item() >= bf - 1e-6
        assert math.isfinite(res.upper[i].item())


def test_exact_gives_the_paper_radii_on_handcrafted_nets() -> None:
    """Averaging net: sqrt(d/k) exactly; decoupled f_robust with threshold sqrt(d)/2: the own unit
    switches off at sqrt(d)/2 (g = 0 counts as an error), below the pairwise sqrt(d/2)."""
    from fabench import registry

    d, k = 200, 10
    task = registry.tasks.get("synthetic")
    data = task.load({**task.meta.params, "d": d, "k": k, "n_train": 20, "n_test": 30, "sigma": 0.0}, seed=1)
    pos = data.positive_mask
    head = BinaryHead(d, 1, init_std=0.0, bias=False)
    with torch.no_grad():
        head.weight[0, 0] = data.features[pos].sum(0) / d
        head.weight[1, 0] = data.features[~pos].sum(0) / d
    res = exact_distances(Classifier(head), data.x_test, data.y_test)
    assert torch.allclose(res.upper, torch.full((30,), math.sqrt(d / k), dtype=torch.float64), rtol=1e-4)
    robust = Classifier(RobustHead(data.features, pos, torch.full((k,), math.sqrt(d) / 2)))
    res = exact_distances(robust, data.x_test, data.y_test)
    assert torch.allclose(res.upper, torch.full((30,), math.sqrt(d) / 2, dtype=torch.float64), rtol=1e-4)
    assert bool(res.exact.all())


def test_exact_refuses_models_it_cannot_solve() -> None:
    head = BinaryHead(4, 9, init_std=1.0)  # 18 units: 2^18 regions
    with pytest.raises(ConfigError, match="units"):
        exact_distances(Classifier(head), torch.zeros(1, 4), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ConfigError, match="backbone"):
        exact_distances(Classifier(BinaryHead(4, 1), torch.nn.Flatten()), torch.zeros(1, 4),
                        torch.zeros(1, dtype=torch.long))


def test_exact_claims_survive_round_off_in_any_batch_composition() -> None:
    """A robust head whose nearest adversarials lie where a J+ and a J- unit balance (g = 0 with both
    units on): every claimed example must stay adversarial however the model batches it (singly,
    all together, reversed, in pairs), i.e. be pushed beyond round-off (cifar5v5/robust seed 2 once
    claimed a point that another batch composition classified correctly)."""
    gen = torch.Generator().manual_seed(3)
    d, n = 64, 400
    feats = torch.randn(2, d, generator=gen)
    feats[1] = 0.9 * feats[0] + 0.45 * feats[1]  # strongly overlapping directions: balanced boundary points
    head = RobustHead(feats * 10, torch.tensor([True, False]), torch.tensor([1.0, 1.0]))
    model = Classifier(head)
    u = head.directions
    x = 3.0 * u[0] + 0.5 * torch.randn(n, d, generator=gen)
    y = torch.ones(n, dtype=torch.long)
    keep = model.correct(x, y)
    x, y = x[keep], y[keep]
    res = exact_distances(model, x, y)
    claimed = torch.isfinite(res.upper)
    assert int(claimed.sum()) > 100
    adv, yc = res.adversarials[claimed], y[claimed]
    with torch.no_grad():
        both_on = (((adv - head.centre) @ u.T - head.thresholds) > 0).all(1)
        assert int(both_on.sum()) > 20, "the test must exercise balanced boundary points"
        singly = torch.cat([model.margin(a[None]) for a in adv])
        together = model.margin(adv)
        reversed_ = model.margin(adv.flip(0)).flip(0)
        pairs = torch.cat([model.margin(adv[i : i + 2]) for i in range(0, len(adv), 2)])
    for g in (singly, together, reversed_, pairs):
        assert bool((g <= 0).all())
    assert bool(~model.correct(adv, yc).any())


def test_line_search_and_refinement_match_the_plain_loops() -> None:
    """``_line_to`` bisects only the segments that reach a flip and ``refine_on_boundary`` revisits
    only the points improved in the previous round: the same distances as bisecting every segment
    and re-running every point each round, on a trained fine head."""
    from fabench import registry
    from fabench.attacks import exact as ex
    from fabench.types import FitContext

    task = registry.tasks.get("synthetic")
    data = task.load({**task.meta.params, "d": 200, "n_train": 200, "n_test": 80}, seed=0)
    rec = registry.recipes.get("fine")
    model = rec.fit(data, dict(rec.meta.params), context=FitContext(seed=0)).eval()
    x, y = data.x_test, data.y_test
    hp = ex.piecewise_head(model)
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(x.shape, generator=g, dtype=torch.float64) * 6.0  # some reach a flip, some do not

    def plain_line_to(delta: torch.Tensor, steps: int = 40) -> torch.Tensor:
        lo, hi = torch.zeros(len(x), dtype=torch.float64), torch.full((len(x),), 1.01, dtype=torch.float64)
        pt = lambda t: (x.double() + t[:, None] * delta).to(x.dtype)  # noqa: E731
        reach = ex.decisively_wrong(model, hp, pt(hi), y)
        for _ in range(steps):
            mid = (lo + hi) / 2
            b = ex.decisively_wrong(model, hp, pt(mid), y)
            hi, lo = torch.where(b, mid, hi), torch.where(b, lo, mid)
        ok = reach & ex.decisively_wrong(model, hp, pt(hi), y)
        return torch.where(ok, (pt(hi).double() - x.double()).norm(dim=1), torch.tensor(math.inf, dtype=torch.float64))

    got, _ = ex._line_to(model, x, y, delta, data.bounds)
    ref = plain_line_to(delta)
    assert 10 < int(torch.isfinite(ref).sum()) < len(x)
    assert torch.equal(got, ref)
    # refinement: every point re-run each round (steps=1 repeated) gives what the pruned loop gives
    dist, adv = ex._line_to(model, x, y, delta, data.bounds)
    adv_ref, dist_ref = adv.clone(), dist.clone()
    for _ in range(20):
        adv_ref, d_new = ex.refine_on_boundary(model, x, y, adv_ref, dist_ref, data.bounds, steps=1, hp=hp)
        if torch.equal(d_new, dist_ref):
            break
        dist_ref = d_new
    adv_got, dist_got = ex.refine_on_boundary(model, x, y, adv, dist, data.bounds, steps=20, hp=hp)
    assert bool((dist_ref < dist).any())  # the refinement improves some points
    assert torch.allclose(dist_got, dist_ref, rtol=1e-6)


def _tiny_fine(d: int, k: int, h: int, seed: int) -> Classifier:
    g = torch.Generator().manual_seed(seed)
    positive = torch.arange(k) < k // 2
    return Classifier(FineHead(d, k, h, positive, init_std=1.0, bias=True, generator=g).double())


def test_span_view_is_the_model_in_the_span_plus_one_ghost_coordinate() -> None:
    """SpanView: the model read in ``r + 1`` coordinates, norms kept, random starts distributed as
    APGD's own uniform start in ``d`` dimensions (the ghost's share of the squared norm is
    ``(d - r) / d`` on average, not ``1 / (r + 1)``)."""
    from fabench.attacks.exact import span_view

    d, k, h = 48, 4, 2
    model = _tiny_fine(d, k, h, 0)
    x, _ = _points(model, d, 64, 1)
    v = 3.0 * torch.randn(64, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    span = span_view(model, x, (-math.inf, math.inf))
    assert span is not None and span.rank == k * h and span.ghost == d - k * h
    with torch.no_grad():
        assert torch.allclose(span(span.coords(x)), model(x), atol=1e-10)
        pv = span.perturbation(v)
        assert torch.allclose(pv.norm(dim=1), v.norm(dim=1), rtol=1e-12)
        xc = span.coords(x)
        z = span.lift(x, xc + pv, xc)
        assert torch.allclose(model(z), model(x + v), atol=1e-10)  # the same outputs...
        assert torch.allclose((z - x).norm(dim=1), pv[:, :-1].norm(dim=1), rtol=1e-12)  # ...closer
        assert bool(((z - x).norm(dim=1) < v.norm(dim=1)).all())
    binary = tiny_binary(d, 3, 4)
    bspan = span_view(binary, x, (-math.inf, math.inf))
    assert bspan is not None and bspan.rank == 6
    with torch.no_grad():
        assert torch.allclose(bspan(bspan.coords(x)), binary(x), atol=1e-10)
    g = torch.Generator().manual_seed(3)  # f_robust (buffers, no parameters; a centre) too
    robust = Classifier(RobustHead(torch.randn(6, d, generator=g), torch.arange(6) < 3, torch.ones(6),
                                   centre=torch.randn(d, generator=g)))
    xr = torch.randn(64, d, generator=g)
    rspan = span_view(robust, xr, (-math.inf, math.inf))
    assert rspan is not None and rspan.rank == 6
    with torch.no_grad():
        assert torch.allclose(rspan(rspan.coords(xr)), robust(xr), atol=1e-4)
    torch.manual_seed(0)
    u = torch.zeros(20000, span.rank + 1, dtype=torch.float64)
    starts = span.random_start(u, torch.full((20000, 1), 2.0, dtype=torch.float64))
    assert torch.allclose(starts.norm(dim=1), torch.full((20000,), 2.0, dtype=torch.float64))
    share = (starts[:, -1] ** 2 / 4.0).mean().item()
    assert share == pytest.approx((d - span.rank) / d, abs=0.01)


def test_apgd_in_the_span_view_follows_apgd_in_the_input_space() -> None:
    """From the same start, the library's APGD on the span view and on the model take the same
    path: the lifted result is the span part of the input-space result (the ghost coordinate
    carries the orthogonal part, which APGD's projections shrink). Without the ghost the path
    would differ: the start's orthogonal part uses up the radius until projections shrink it."""
    from fabench.attacks.autoattack import apgd_l2, unit_box
    from fabench.attacks.exact import span_view

    d, k, h = 48, 4, 2
    model = _tiny_fine(d, k, h, 3)
    x, y = _points(model, d, 40, 4)
    data = SimpleNamespace(bounds=(-math.inf, math.inf))
    eps = 1.2 * exact_distances(model, x, y).upper.detach()
    v0 = torch.randn(40, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    v0 = v0 / v0.norm(dim=1, keepdim=True) * eps[:, None] * 0.99
    full = apgd_l2(unit_box(model, x, data, float(eps.max())), x, y, eps, steps=10, restarts=0, start=v0)
    span = span_view(model, x, data.bounds)
    assert span is not None
    xc = span.coords(x)
    found = apgd_l2(unit_box(span, xc, data, float(eps.max())), xc, y, eps, steps=10, restarts=0,
                    start=span.perturbation(v0))
    lifted = span.lift(x, found, xc)
    q = span.basis
    projected = x + (full - x) @ q @ q.T
    fooled = ~model.correct(full, y)
    assert 0 < int(fooled.sum()) < 40  # a test with both outcomes
    assert torch.equal(fooled, ~model.correct(lifted, y))
    assert torch.allclose(lifted[fooled], projected[fooled], atol=1e-6 * float(eps.max()))


def test_pgd_in_the_span_view_is_pgd_in_the_input_space() -> None:
    """fabench's L2 PGD from the same start on the span view, lifted with the start's orthogonal
    part, is the input-space PGD iterate (the orthogonal part only shrinks, by the projections);
    and the pgd attack takes that path exactly where it applies (an unbounded input, a head of
    fewer than d - 1 units), with the same curve as the input-space attack."""
    from fabench.attacks.exact import span_view
    from fabench.attacks.foolbox_attacks import PGDAttack, l2_pgd

    d, k, h = 48, 4, 2
    model = _tiny_fine(d, k, h, 6)
    x, y = _points(model, d, 60, 7)
    eps = 1.3 * exact_distances(model, x, y).upper.detach()
    g = torch.Generator().manual_seed(8)
    start = torch.randn(60, d, generator=g, dtype=torch.float64)
    start = start / start.norm(dim=1, keepdim=True) * eps[:, None] * 0.9
    opts = dict(steps=25, rel_stepsize=0.05, bounds=(-math.inf, math.inf))
    full = l2_pgd(model, x, y, eps, start, **opts)
    span = span_view(model, x, (-math.inf, math.inf))
    assert span is not None
    xc = span.coords(x)
    lifted = span.lift(x, l2_pgd(span, xc, y, eps, span.perturbation(start), **opts), xc, start=start)
    assert torch.allclose(lifted, full, atol=1e-9)
    assert span_view(model, x, (0.0, 1.0)) is None  # a box: not a function of the span coordinates
    assert span_view(_tiny_fine(8, 4, 2, 0), x[:, :8], (-math.inf, math.inf)) is None  # r + 1 >= d

    calls = []
    original = span_view
    import fabench.attacks.exact as exact_module

    def spy(*args, **kwargs):
        calls.append(original(*args, **kwargs))
        return calls[-1]

    data = SimpleNamespace(bounds=(-math.inf, math.inf))
    params = dict(PGDAttack.meta.params)
    model, x = model.float(), x.float()  # the attacks' models are float32
    radii = [0.0] + [round(float(v), 3) for v in torch.quantile(eps / 1.3, torch.tensor([0.2, 0.5, 0.8], dtype=eps.dtype))]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exact_module, "span_view", spy)
        in_span = PGDAttack().run(model, x, y, radii, data=data, params=params, seed=0)
        mp.setattr(exact_module, "span_view", lambda *a, **kw: None)
        in_input = PGDAttack().run(model, x, y, radii, data=data, params=params, seed=0)
    assert len(calls) == 1 and calls[0] is not None
    assert torch.equal(in_span.broken, in_input.broken)
    assert 0 < int(in_span.broken[2].sum()) < 60
