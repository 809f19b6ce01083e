import pandas as pd
import pytest
import torch

import mitigation as mit


# --------------------------------------------------------------------------- penalties

def test_dp_penalty_is_spread_of_group_mean_probability():
    probs = torch.tensor([0.9, 0.7, 0.2, 0.4])
    logits = torch.logit(probs)
    groups = torch.tensor([0, 0, 1, 1])
    assert mit.dp_penalty(logits, groups).item() == pytest.approx(0.8 - 0.3, abs=1e-6)
    two_class = torch.stack([torch.zeros(4), logits], dim=1)  # softmax over [0, z] = sigmoid(z)
    assert mit.dp_penalty(two_class, groups).item() == pytest.approx(0.5, abs=1e-6)


def test_eo_penalty_conditions_on_label():
    # Equal positive rate overall per group, but unequal within each label.
    probs = torch.tensor([0.9, 0.1, 0.5, 0.5])
    targets = torch.tensor([1, 0, 1, 0])
    groups = torch.tensor([0, 0, 1, 1])
    logits = torch.logit(probs)
    assert mit.dp_penalty(logits, groups).item() == pytest.approx(0.0, abs=1e-6)
    assert mit.eo_penalty(logits, targets, groups).item() == pytest.approx(0.4, abs=1e-6)


def test_penalty_single_group_is_zero_and_differentiable():
    logits = torch.randn(5, requires_grad=True)
    penalty = mit.dp_penalty(logits, torch.zeros(5, dtype=torch.long))
    penalty.backward()
    assert penalty.item() == 0.0 and logits.grad is not None


def test_penalty_rejects_multiclass_logits():
    with pytest.raises(ValueError, match="not binary"):
        mit.dp_penalty(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


def test_loss_hook_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown fairness penalty 'xx'"):
        mit.fairness_loss_hook("xx", 1.0)
    with pytest.raises(ValueError, match="negative"):
        mit.fairness_loss_hook("dp", -1.0)


def _train_logistic(lam, penalty="dp", steps=300, seed=0):
    """Logistic regression on a task whose label rate differs by group and whose one feature leaks the group."""
    gen = torch.Generator().manual_seed(seed)
    n = 400
    groups = torch.randint(0, 2, (n,), generator=gen)
    targets = (torch.rand(n, generator=gen) < torch.where(groups == 1, 0.8, 0.2)).long()
    features = torch.stack([targets + 0.8 * torch.randn(n, generator=gen), groups.float()], dim=1)
    torch.manual_seed(seed)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    hook = mit.fairness_loss_hook(penalty, lam)
    for _ in range(steps):
        logits = model(features)
        loss = hook(logits, targets, groups, torch.nn.functional.cross_entropy(logits, targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = model(features)
    return mit.dp_penalty(logits, groups).item(), mit.eo_penalty(logits, targets, groups).item()


def test_dp_penalty_lowers_dp_gap_on_planted_gap():
    dp_plain, _ = _train_logistic(lam=0.0)
    dp_fair, _ = _train_logistic(lam=5.0)
    assert dp_plain > 0.3
    assert dp_fair < 0.5 * dp_plain


def test_eo_penalty_lowers_eo_gap_on_planted_gap():
    _, eo_plain = _train_logistic(lam=0.0, penalty="eo")
    _, eo_fair = _train_logistic(lam=5.0, penalty="eo")
    assert eo_fair < 0.5 * eo_plain


# --------------------------------------------------------------------------- ranking and allocation

def _sensitivity(scores):
    return pd.DataFrame(
        [{"layer": layer, "bits": 4, "delta_loss": s, "delta_worst_group_loss": -s, "delta_dp_gap": 0.0}
         for layer, s in scores.items()]
    )


def test_rank_layers_by_criterion():
    table = _sensitivity({"a": 0.1, "b": 0.5, "c": 0.3})
    assert mit.rank_layers(table, "overall") == ["b", "c", "a"]
    assert mit.rank_layers(table, "worst_group") == ["a", "c", "b"]
    with pytest.raises(ValueError, match="unknown sensitivity criterion 'loss'"):
        mit.rank_layers(table, "loss")


@pytest.mark.parametrize("budget", [8.0, 6.5, 5.0, 4.0])
def test_allocate_bits_meets_average_bit_budget_and_protects_sensitive_layer(budget):
    sizes = {"a": 1000, "b": 1000, "c": 2000}
    table = _sensitivity({"a": 0.01, "b": 0.9, "c": 0.02})
    bits = mit.allocate_bits(table, sizes, budget, choices=(8, 4))
    average = sum(sizes[k] * v for k, v in bits.items()) / sum(sizes.values())
    assert average <= budget + 1e-9
    assert set(bits) == set(sizes) and set(bits.values()) <= {8, 4}
    assert bits["b"] == max(bits.values())  # the fragile layer is the last to lose bits


def test_allocate_bits_lowers_every_layer_one_level_before_a_second():
    sizes = {"a": 1000, "b": 1000}
    table = _sensitivity({"a": 0.1, "b": 0.9})
    assert mit.allocate_bits(table, sizes, 4.0, choices=(8, 4, 2)) == {"a": 4, "b": 4}
    assert mit.allocate_bits(table, sizes, 3.0, choices=(8, 4, 2)) == {"a": 2, "b": 4}


def test_allocate_bits_mib_budget():
    sizes = {"a": 2**20, "b": 2**20}  # 1 MiB each at 8 bits
    table = _sensitivity({"a": 0.1, "b": 0.9})
    bits = mit.allocate_bits(table, sizes, 1.6, unit="mib")
    assert bits == {"a": 4, "b": 8}
    assert mit.weight_size_mib(bits, sizes) <= 1.6


def test_allocate_bits_impossible_budget_is_clear():
    table = _sensitivity({"a": 0.1})
    with pytest.raises(ValueError, match="cannot be met"):
        mit.allocate_bits(table, {"a": 100}, 2.0, choices=(8, 4))
    with pytest.raises(ValueError, match="no size"):
        mit.allocate_bits(table, {}, 8.0)
    with pytest.raises(ValueError, match="unknown budget unit"):
        mit.allocate_bits(table, {"a": 100}, 8.0, unit="bytes")
