"""Tests for emreason.extras.grokking_flatness against autograd Hessians and loop references."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from emreason.extras.grokking_flatness import (
    GrokkingConfig,
    ModularMLP,
    ModularTransformer,
    collapse_metric,
    first_step_reaching,
    flatness_upper_bound,
    modular_addition_split,
    relative_flatness,
    train_grokking,
)


def test_relative_flatness_matches_autograd_hessian():
    torch.manual_seed(0)
    n, h, c = 6, 3, 4
    feats = torch.randn(n, h, dtype=torch.float64)
    labels = torch.randint(0, c, (n,))
    weight = torch.randn(c, h, dtype=torch.float64)
    hess = torch.autograd.functional.hessian(lambda w: F.cross_entropy(feats @ w.T, labels), weight)
    # hess[s, i, t, j] = d^2 L / dW_si dW_tj ; kappa = sum_{s,t} <w_s, w_t> Tr(H_{s,t})
    block_traces = torch.einsum("sitj,ij->st", hess, torch.eye(h, dtype=torch.float64))
    expected = ((weight @ weight.T) * block_traces).sum()
    torch.testing.assert_close(relative_flatness(feats, weight), expected, rtol=1e-10, atol=1e-12)


def test_upper_bound_dominates_flatness():
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        feats = torch.randn(10, 5, generator=gen, dtype=torch.float64) * 3
        weight = torch.randn(7, 5, generator=gen, dtype=torch.float64)
        assert flatness_upper_bound(feats, weight) >= relative_flatness(feats, weight) - 1e-12


def test_collapse_metric_matches_loop_and_vanishes_at_collapse():
    rng = np.random.default_rng(2)
    feats = rng.standard_normal((30, 4))
    labels = np.repeat(np.arange(3), 10)
    means = [feats[labels == k].mean(0) for k in range(3)]
    var = [np.mean(np.sum((feats[labels == k] - means[k]) ** 2, 1)) for k in range(3)]
    expected = np.mean(
        [
            (var[a] + var[b]) / (2 * np.sum((means[a] - means[b]) ** 2))
            for a, b in itertools.combinations(range(3), 2)
        ]
    )
    got = collapse_metric(torch.tensor(feats), torch.tensor(labels), 3)
    assert float(got) == pytest.approx(expected, rel=1e-10)
    collapsed = torch.tensor(np.stack(means)[labels])
    assert float(collapse_metric(collapsed, torch.tensor(labels), 3)) < 1e-10


def test_collapse_metric_counts_singleton_classes_and_has_finite_gradient():
    # the authors' per-batch NCC keeps a class seen once, with zero variance
    feats = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    # V_0 = 1, V_1 = 0, mu_0 = (1, 0), mu_1 = (5, 5): (1 + 0) / (2 * 41)
    value = collapse_metric(feats, labels, 3)
    assert float(value.detach()) == pytest.approx(1 / 82, rel=1e-12)
    # two classes with the same mean: the clamped ratio stays finite and so does its gradient
    same = torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    collapse_metric(same, labels, 3).backward()
    assert torch.isfinite(same.grad).all()
    value.backward()
    assert torch.isfinite(feats.grad).all()
    with pytest.raises(ValueError, match="two classes"):
        collapse_metric(torch.zeros(3, 2), torch.tensor([1, 1, 1]), 3)


def test_detached_distances_leave_only_the_within_class_gradient():
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    labels = torch.arange(12) % 3
    shift = torch.zeros(12, 3, dtype=torch.float64)
    shift[labels == 0] = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)  # moves class 0's mean only

    def directional(detach: bool) -> float:
        x = feats.clone().requires_grad_(True)
        collapse_metric(x, labels, 3, detach_distances=detach).backward()
        return float((x.grad * shift).sum())

    assert abs(directional(False)) > 1e-3  # moving a class mean changes the distances
    assert abs(directional(True)) < 1e-12  # with detached distances only the spread gets a gradient
    torch.testing.assert_close(
        collapse_metric(feats, labels, 3, detach_distances=True), collapse_metric(feats, labels, 3)
    )


def test_modular_addition_split():
    x_tr, y_tr, x_va, y_va = modular_addition_split(11, 0.3, seed=0)
    assert len(x_tr) == round(0.3 * 121) and len(x_tr) + len(x_va) == 121
    assert torch.equal(y_tr, (x_tr[:, 0] + x_tr[:, 1]) % 11)
    pairs_tr = {tuple(r) for r in x_tr.tolist()}
    assert pairs_tr.isdisjoint({tuple(r) for r in x_va.tolist()})


def test_model_shapes():
    model = ModularMLP(13, embed_dim=8, hidden=16)
    x = torch.tensor([[1, 2], [3, 4]])
    assert model.features(x).shape == (2, 16) and model(x).shape == (2, 13)


@pytest.fixture(scope="module")
def short_runs():
    base = dict(p=13, train_fraction=0.5, embed_dim=16, hidden=32, lr=3e-3, steps=200, log_every=50)
    return {
        "plain": train_grokking(GrokkingConfig(**base)),
        "anti_collapse": train_grokking(
            GrokkingConfig(**base, regularizer="anti_collapse", reg_strength=0.1)
        ),
        "anti_flatness": train_grokking(
            GrokkingConfig(**base, regularizer="anti_flatness", reg_strength=0.05, regularizer_until=100)
        ),
    }


def test_training_memorizes(short_runs):
    log = short_runs["plain"]
    assert log["train_acc"][-1] == 1.0
    assert first_step_reaching(log, "train_acc", 1.0) is not None
    assert log["step"] == list(range(0, 201, 50))


def test_regularizers_push_their_metric(short_runs):
    assert short_runs["anti_collapse"]["collapse"][-1] > 1.5 * short_runs["plain"]["collapse"][-1]
    at_switch_off = short_runs["plain"]["step"].index(100)
    assert (
        short_runs["anti_flatness"]["flatness"][at_switch_off]
        > 1.5 * short_runs["plain"]["flatness"][at_switch_off]
    )


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="regularizer"):
        GrokkingConfig(regularizer="sam")
    with pytest.raises(ValueError, match="reg_form"):
        GrokkingConfig(reg_form="sqrt")
    with pytest.raises(ValueError, match="train_fraction"):
        modular_addition_split(11, 1.5)
    with pytest.raises(ValueError, match="features"):
        relative_flatness(torch.zeros(3, 4), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="labels"):
        collapse_metric(torch.zeros(3, 4), torch.tensor([0, 1, 9]), 3)


def test_transformer_features_feed_the_head_and_see_both_tokens():
    model = ModularTransformer(13, d_model=16, n_heads=2, n_layers=2, d_mlp=32, seed=0)
    x = torch.tensor([[1, 2], [3, 4], [3, 5]])
    feats = model.features(x)
    assert feats.shape == (3, 16) and model(x).shape == (3, 13)
    torch.testing.assert_close(model(x), feats @ model.head.weight.T)
    assert not torch.allclose(feats[1], feats[2])  # the second operand changes the prediction features
    with pytest.raises(ValueError, match="divisible"):
        ModularTransformer(13, d_model=10, n_heads=3)


def test_transformer_collapse_regularizer_tightens_classes():
    base = dict(
        p=11,
        train_fraction=0.6,
        architecture="transformer",
        embed_dim=16,
        n_heads=2,
        lr=3e-3,
        steps=60,
        log_every=30,
        adam_beta2=0.98,
        grad_clip=1.0,
    )
    plain = train_grokking(GrokkingConfig(**base))
    collapsed = train_grokking(GrokkingConfig(**base, regularizer="collapse", reg_strength=1.0))
    assert collapsed["collapse"][-1] < 0.8 * plain["collapse"][-1]
    with pytest.raises(ValueError, match="architecture"):
        GrokkingConfig(architecture="rnn")
    with pytest.raises(ValueError, match="grad_clip"):
        GrokkingConfig(grad_clip=0.0)


def test_stop_after_generalized_ends_the_run_early():
    base = dict(p=13, train_fraction=0.5, embed_dim=16, hidden=32, lr=3e-3, steps=200, log_every=20)
    # any correct validation answer reaches this threshold, so it is met at an early log point
    log = train_grokking(GrokkingConfig(**base, stop_after_generalized=30, generalized_acc=1e-6))
    first = first_step_reaching(log, "val_acc", 1e-6)
    assert log["step"][-1] == first + 30 < 200
    assert len(log["val_acc"]) == len(log["step"])
    with pytest.raises(ValueError, match="stop_after_generalized"):
        GrokkingConfig(stop_after_generalized=-1)


def _fake_summary(gen: int | None, nc: float = 0.1, kappa: float = 5.0) -> dict:
    return {
        "generalized_step": gen,
        "collapse_median_mem_to_gen": nc,
        "flatness_median_mem_to_gen": kappa,
        "final_train_acc": 1.0,
    }


def test_aggregate_judges_against_the_plain_seed_spread():
    from emreason.extras.reproduce.grokking_flatness import _aggregate, run_name

    summary = {run_name(None, 0, s): _fake_summary(g) for s, g in zip(range(4), (1000, 1200, 1100, 1300))}
    summary |= {
        run_name("collapse", 0.1, 0): _fake_summary(1100, nc=0.05),
        run_name("collapse", 0.1, 1): _fake_summary(1300, nc=0.05),
        run_name("anti_collapse", 1e-3, 0): _fake_summary(1600, nc=0.3),  # 1.6x > spread 1.3
        run_name("anti_collapse", 1e-3, 1): _fake_summary(1900, nc=0.3),
        run_name("anti_flatness", 1e-2, 0): _fake_summary(None, kappa=50.0),  # >= 3000 / 1000
        run_name("anti_flatness", 1e-2, 1): _fake_summary(2500, kappa=50.0),  # 2.08x
        run_name("anti_collapse", 1e-2, 0): _fake_summary(None, nc=900.0) | {"final_train_acc": 0.06},
        run_name("anti_collapse", 1e-2, 1): _fake_summary(None, nc=900.0) | {"final_train_acc": 0.06},
    }
    sweeps = {"collapse": (0.1,), "anti_collapse": (1e-3, 1e-2), "anti_flatness": (1e-2,)}
    agg = _aggregate(summary, 3000, (0, 1), (0, 1, 2, 3), sweeps)
    assert agg["tolerance"]["spread_max_over_min"] == pytest.approx(1.3)
    by = agg["by_strength"]
    assert by["collapse 0.1"]["verdict"] == "unchanged"
    assert by["collapse 0.1"]["step_ratios"] == pytest.approx([1.1, 1300 / 1200])
    assert by["collapse 0.1"]["nc_median_ratio"] == pytest.approx([0.5, 0.5])
    assert by["anti_collapse 0.001"]["verdict"] == "changed"
    assert by["anti_collapse 0.01"]["verdict"] == "training fails"
    assert by["anti_flatness 0.01"]["verdict"] == "delayed"
    assert by["anti_flatness 0.01"]["ratio_is_lower_bound"] == [True, False]
    assert by["anti_flatness 0.01"]["kappa_median_ratio"] == pytest.approx([10.0, 10.0])


def test_reproduce_quick_writes_results(tmp_path):
    import json

    from emreason.extras.reproduce.grokking_flatness import main

    result = main(["--quick", "--jobs", "1", "--output", str(tmp_path)])
    saved = json.loads((tmp_path / "grokking_flatness.json").read_text())
    assert (tmp_path / "grokking_flatness.png").stat().st_size > 0
    assert set(saved["summary"]) == set(result["summary"])
    assert {"plain seed 0", "collapse 0.1 seed 0", "anti_collapse 0.001 seed 0"} <= set(saved["summary"])
    assert saved["runs"]["plain seed 0"]["step"][-1] == 100


def test_sweep_keys_parse_into_config_fields():
    from emreason.extras.reproduce.grokking_flatness import _parse_sweep_key

    paper = _parse_sweep_key("anti_collapse")
    assert paper == {
        "regularizer": "anti_collapse",
        "regularizer_from": 0,
        "reg_form": "linear",
        "nc_detach_distances": False,
        "reg_cap": None,
    }
    variant = _parse_sweep_key("anti_collapse@300#det#cap0.3")
    assert variant["regularizer_from"] == 300 and variant["nc_detach_distances"] and variant["reg_cap"] == 0.3
    GrokkingConfig(**variant)  # every parsed field is a config field
    with pytest.raises(ValueError, match="flags"):
        _parse_sweep_key("anti_collapse#sqrt")
    with pytest.raises(ValueError, match="reg_cap"):
        GrokkingConfig(reg_cap=0.0)
