"""Circuits, the compact bound (sound against brute force) and the neuron analyses."""

from __future__ import annotations

import numpy as np
import torch

from npeff.groups import get_group
from npeff.groups.bound import bound_vs_brute_force
from npeff.groups.components import coset_purity, irrep_purity, neuron_owner
from npeff.groups.concepts import coset_concepts, coset_families
from npeff.groups.network import all_logits, fold
from npeff.groups.neurons import analyze_neurons, concentration
from npeff.models.simple import GroupMLP


def lookup_network(group, noise: float = 0.0, seed: int = 0) -> dict:
    """An exactly bi-equivariant correct network: neuron (g, h) fires on (x, y) = (g, h) only
    and votes for g·h. It is one orbit of one prototype under G×G (independent of the code)."""
    n = group.order
    g_idx, h_idx = np.divmod(np.arange(n * n), n)
    w = np.zeros((n * n, 2 * n))
    w[np.arange(n * n), g_idx] = 1.0
    w[np.arange(n * n), n + h_idx] = 1.0
    u = np.zeros((n, n * n))
    u[group.table[g_idx, h_idx], np.arange(n * n)] = 1.0
    rng = np.random.default_rng(seed)
    sd = {
        "embed_left": np.eye(n),
        "embed_right": np.eye(n),
        "hidden.weight": w + noise * rng.standard_normal(w.shape),
        "hidden.bias": -np.ones(n * n) + noise * rng.standard_normal(n * n),
        "unembed.weight": u + noise * rng.standard_normal(u.shape),
        "unembed.bias": noise * rng.standard_normal(n),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in sd.items()}


def _bound(group, sd):
    net = fold(sd)
    na = analyze_neurons(group, net)
    res, circuits = bound_vs_brute_force(group, net, na.irrep, na.live)
    return res, circuits


def test_folded_network_matches_groupmlp():
    m = GroupMLP(6, 6, 8, 10)
    net = fold(m.state_dict())
    x, y = torch.arange(36) // 6, torch.arange(36) % 6
    assert torch.allclose(all_logits(net), m(x, y).double().float(), atol=1e-5)


def test_bound_exact_on_an_exactly_equivariant_network():
    g = get_group("S3")
    res, circuits = _bound(g, lookup_network(g))
    assert res.brute_force_accuracy == 1.0
    assert res.bound == 1.0 and res.sound
    assert circuits[0].orbit_size == 36 and circuits[0].coverage == 1.0


def test_bound_sound_under_noise_and_at_random_init():
    g = get_group("S3")
    bounds = []
    for noise in (0.02, 0.1, 0.3):
        res, _ = _bound(g, lookup_network(g, noise))
        assert res.bound <= res.brute_force_accuracy
        bounds.append(res.bound)
    assert bounds[0] > 0.9  # small noise keeps a non-vacuous bound
    for seed in range(3):
        torch.manual_seed(seed)
        res, _ = _bound(g, GroupMLP(6, 6, 8, 32).state_dict())
        assert res.bound <= res.brute_force_accuracy


def test_coset_concentration_finds_the_subgroup():
    g = get_group("S4")
    rng = np.random.default_rng(0)
    subs = g.subgroups()
    h = subs[3]
    left = g.left_cosets(h)
    v = rng.standard_normal(left.max() + 1)[left]  # constant on left cosets of h
    best, order, share = concentration(g, v[:, None], subs, "left", 0.95)
    assert order[0] == len(h) and share[0] > 0.999
    assert np.array_equal(g.left_cosets(subs[best[0]]), left)


def test_coset_concepts_by_brute_force():
    g = get_group("S4")
    fams = coset_families(g, 4)
    x = np.arange(g.order)
    y = (x * 5 + 3) % g.order
    names, c = coset_concepts(g, x, y, fams)
    assert c.shape == (g.order, len(names))
    for j, name in enumerate(names[:40]):
        role, rest = name.split(":")
        fam = next(f for f in fams if rest.startswith(f.label + "#"))
        k = int(rest.split("#")[1])
        v = {"xL": x, "yR": y, "zL": g.table[x, y], "zR": g.table[x, y]}[role]
        ref = (g.left_cosets if role.endswith("L") else g.right_cosets)(fam.elements)
        rep = np.nonzero(ref == k)[0][0]
        if role.endswith("L"):  # v ∈ rep·H  iff  rep⁻¹·v ∈ H
            expect = np.isin(g.table[g.inverses[rep], v], fam.elements)
        else:
            expect = np.isin(g.table[v, g.inverses[rep]], fam.elements)
        assert np.array_equal(c[:, j], expect)


def test_neuron_owner_and_irrep_purity():
    from npeff.artifacts.layout import ParameterLayout

    m = GroupMLP(6, 6, 4, 5)
    layout = ParameterLayout.from_named_tensors(m.named_parameters())
    owner = neuron_owner(layout, 5)
    flat = {k: torch.zeros_like(v) for k, v in m.named_parameters()}
    flat["hidden.weight"][2] = 1.0
    flat["hidden.bias"][2] = 1.0
    flat["unembed.weight"][:, 2] = 1.0
    vec = layout.flatten(flat).numpy()
    assert set(owner[vec > 0]) == {2}
    assert (owner[: 6 * 4 * 2] == -1).all()  # embeddings are shared
    mass = np.zeros((2, 5))
    mass[0, [0, 1]] = 1.0  # all on irrep 1
    mass[1] = 1.0
    out = irrep_purity(mass, np.array([1, 1, 2, 2, 3]), 4, n_shuffles=50)
    assert out["per_row_purity"][0] == 1.0 and np.isclose(out["per_row_purity"][1], 0.4)
    assert out["shuffled_mean_purity"] < out["mean_purity"]


def test_coset_purity_planted_components():
    g = get_group("S4")
    h = g.subgroups()[0]  # A4: index 2
    left = g.left_cosets(h)
    x, y = np.divmod(np.arange(g.order**2), g.order)
    W = np.random.default_rng(0).random((len(x), 2)) * 0.1
    W[left[x] == 1, 0] += 1.0  # component 0's top examples have x in one coset
    out = coset_purity(g, x, y, W, [(h, h)], top_k=16, n_shuffles=10)
    assert out["per_component"][0] == 1.0
    assert out["shuffled_mean_purity"] < 1.0


def _true_margins(net, group) -> np.ndarray:
    """float ``[N²]``: min_{z ≠ x·y} real(x·y) − real(z), float64 brute force."""
    logits = all_logits(net, dtype=torch.float64).numpy()
    t = group.table.reshape(-1)
    right = logits[np.arange(len(t)), t].copy()
    logits[np.arange(len(t)), t] = -np.inf
    return right - logits.max(1)


def test_verifier_lower_bound_never_exceeds_the_true_margin_per_input():
    """Per input, the certified lower bound on the real margin (slack × ideal margin) is below
    the brute-force margin, for noisy exact networks, a random one and an explanation fitted to
    another network (a wrong explanation must weaken the bound, not break it)."""
    from npeff.groups.bound import compact_bound, explain, verify

    g = get_group("S3")
    for sd in (
        lookup_network(g, 0.05, 1),
        lookup_network(g, 0.3, 2),
        GroupMLP(6, 6, 8, 32).state_dict(),
    ):
        net = fold(sd)
        na = analyze_neurons(g, net, subgroups=[])
        res, _, cert = compact_bound(g, net, na.irrep, na.live, fourier_share=0.05)
        true = _true_margins(net, g)
        denom = cert.margin if cert.margin > 0 else 1.0
        assert np.all(cert.slack * denom <= true + 1e-6)
        assert not np.any(cert.certified & (true <= 0))
    # the explanation of one network, verified on another
    good, other = fold(lookup_network(g, 0.02, 3)), fold(lookup_network(g, 0.2, 4))
    na = analyze_neurons(g, good, subgroups=[])
    _, ideal, _, _ = explain(g, good, na.irrep, na.live)
    cert = verify(
        g, *(t.numpy() for t in (other.left, other.right, other.unembed, other.bias)), ideal
    )
    true = _true_margins(other, g)
    assert not np.any(cert.certified & (true <= 0))
    assert np.all(cert.slack * max(cert.margin, 1e-300) <= true + 1e-6)


def test_fourier_part_is_exact_when_every_irrep_is_kept():
    """With every irrep in the Fourier part (share 0) and no circuits, the per-class pass is the
    real margin itself: the certificate equals brute-force correctness."""
    from npeff.groups.bound import verify
    from npeff.groups.ideal import IdealModel

    g = get_group("S3")
    torch.manual_seed(0)
    net = fold(GroupMLP(6, 6, 8, 32).state_dict())
    ideal = IdealModel([], np.ones(32), np.zeros(6))
    parts = (t.numpy() for t in (net.left, net.right, net.unembed, net.bias))
    parts = list(parts)
    true = _true_margins(net, g)
    tol = 1e-6 * (1.0 + np.abs(net.bias.numpy()).max())
    cert = verify(g, *parts, ideal, fourier_share=0.0, class_dtype=torch.float64)
    assert np.array_equal(cert.certified, true > tol)
    assert np.allclose(cert.slack, true, atol=1e-8)
    # float32 per-class pass: below the true margin by at most its rounding bound
    cert = verify(g, *parts, ideal, fourier_share=0.0)
    assert np.all(cert.slack <= true + 1e-9) and np.all(cert.slack >= true - 1e-4)
    assert not np.any(cert.certified & (true <= 0))


def test_float32_class_pass_never_above_the_exact_value_at_tiny_margins():
    """The per-class pass in float32 minus its rounding bound is below the float64 value on
    every input, also where the exact value is ~0 by construction (base cancels the matmul
    terms); the plain float32 value, without the bound, is above it on some of them."""
    from npeff.groups.bound import class_pass

    rng = np.random.default_rng(0)
    Zs, n, N = 3, 20, 24
    coefs = [torch.as_tensor(rng.standard_normal((Zs, n, c)) * 30.0) for c in (9, 16, 5)]
    tables = [
        torch.as_tensor(rng.standard_normal((1, 9, N))),
        torch.as_tensor(rng.standard_normal((1, 16, N))),
        torch.as_tensor(np.abs(rng.standard_normal((Zs, 5, N)))),
    ]
    fstar = torch.as_tensor(rng.standard_normal((Zs, n)) * 50.0)
    prod = sum(torch.bmm(a, t.expand(Zs, -1, -1)) for a, t in zip(coefs, tables))
    base = prod - fstar[:, :, None]  # G(z) = 0 exactly (up to float64 rounding)
    base += torch.as_tensor(rng.uniform(0.0, 1e-5, (Zs, n, N)))  # tiny positive margins
    base[:, :, 0] = torch.inf  # an excluded class
    bmax = float(base[:, :, 1:].abs().max())
    exact = class_pass(base, fstar, coefs, tables, bmax, torch.float64)
    assert torch.all(exact > 0)  # every input's true margin is positive but tiny
    g32 = class_pass(base, fstar, coefs, tables, bmax, torch.float32)
    assert torch.all(g32 <= exact + 1e-9)
    assert torch.all(g32 >= exact - 0.05)  # the bound is not vacuous
    # the unguarded float32 evaluation overshoots the exact per-class value on some pairs
    raw = base.float() + fstar.float()[:, :, None]
    for a, t in zip(coefs, tables):
        raw -= torch.bmm(a.float(), t.float().expand(Zs, -1, -1))
    per_class = base + fstar[:, :, None] - prod
    assert torch.any(raw[:, :, 1:].double() > per_class[:, :, 1:] + 1e-6)


def test_verifier_float32_and_member_share_settings_agree_with_brute_force():
    """Every verifier setting (float32/float64 per-class pass, circuit members with every irrep
    exact or not, small chunks so that the per-class pass runs on a subset of each step) is
    sound input by input on a trained-like network and a near-tie network."""
    from npeff.groups.bound import explain, verify

    g = get_group("S3")
    nets = [fold(lookup_network(g, 0.05, 5))]
    sd = lookup_network(g, 0.0)
    sd["unembed.weight"][1] = sd["unembed.weight"][2]  # classes 1 and 2 tie exactly
    sd["unembed.bias"][1] = sd["unembed.bias"][2] + 1e-7  # class 1 a hair ahead
    nets.append(fold(sd))
    for net in nets:
        na = analyze_neurons(g, net, subgroups=[])
        _, ideal, (L, R, U), _ = explain(g, net, na.irrep, na.live)
        true = _true_margins(net, g)
        for dtype in (torch.float32, torch.float64):
            for ms in (None, 0.0):
                cert = verify(
                    g,
                    L,
                    R,
                    U,
                    net.bias.numpy(),
                    ideal,
                    chunk=12,
                    class_dtype=dtype,
                    member_share=ms,
                )
                denom = cert.margin if cert.margin > 0 else 1.0
                assert np.all(cert.slack * denom <= true + 1e-6)
                assert not np.any(cert.certified & (true <= 0))
    assert np.any(_true_margins(nets[1], g) <= 0)  # the tie: some inputs are wrong


def test_verifier_sound_with_complex_type_irreps():
    """Z6 (clock irreps, complex type) and S3×Z3: the verifier's per-irrep terms that are only
    defined for real-type irreps are not used for the others; sound input by input."""
    from npeff.groups.bound import compact_bound

    for name in ("Z6", "S3xZ3"):
        g = get_group(name)
        n = g.order
        torch.manual_seed(1)
        for sd in (lookup_network(g, 0.05, 7), GroupMLP(n, n, 8, 24).state_dict()):
            net = fold(sd)
            na = analyze_neurons(g, net, subgroups=[])
            _, _, cert = compact_bound(g, net, na.irrep, na.live)
            true = _true_margins(net, g)
            denom = cert.margin if cert.margin > 0 else 1.0
            assert np.all(cert.slack * denom <= true + 1e-6)
            assert not np.any(cert.certified & (true <= 0))


def test_best_gauge_minimises_its_objective():
    """The batched quartic-root gauge is the minimiser of λ²A − 2λB + C/λ² − 2D/λ over λ > 0
    (against a dense grid), and 1 where A or C is not positive."""
    from npeff.groups.ideal import _best_gauge

    rng = np.random.default_rng(0)
    A, C = rng.uniform(0.1, 5, 50), rng.uniform(0.1, 5, 50)
    B, D = rng.normal(0, 3, 50), rng.normal(0, 3, 50)
    A[0], C[1] = 0.0, -1.0
    lam = _best_gauge(A, B, C, D)
    assert lam[0] == 1.0 and lam[1] == 1.0
    grid = np.geomspace(1e-3, 1e3, 200001)[:, None]
    f = lambda x: x**2 * A - 2 * x * B + C / x**2 - 2 * D / x  # noqa: E731
    assert np.all(f(lam[None])[0, 2:] <= f(grid).min(0)[2:] + 1e-6)
