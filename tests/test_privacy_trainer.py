"""DP-SGD trainer: clipping, noise scale, equivalence with plain SGD and between engines."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedcascade.privacy import DPPlan, poisson_batches, train_dp

torch.set_num_threads(1)
ENGINES = ["ghost", "opacus"]


class LoRALinear(nn.Module):
    """Frozen base layer plus a trainable low-rank update, like a peft LoRA layer."""

    def __init__(self, d_in: int, d_out: int, rank: int) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out).requires_grad_(False)
        self.lora_A = nn.Linear(d_in, rank, bias=False)
        self.lora_B = nn.Linear(rank, d_out, bias=False)
        nn.init.normal_(self.lora_B.weight, std=0.1)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x))


class AdapterMLP(nn.Module):
    def __init__(self, d_in: int = 12, hidden: int = 24, classes: int = 3) -> None:
        super().__init__()
        self.l1 = LoRALinear(d_in, hidden, 2)
        self.norm = nn.BatchNorm1d(hidden).requires_grad_(False)  # frozen, with running stats
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.1)
        self.l2 = LoRALinear(hidden, hidden, 2)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = self.drop(self.act(self.norm(self.l1(x))))
        return self.head(self.act(self.l2(h)))


def _data(n=80, d=12, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def _model(seed=0):
    torch.manual_seed(seed)
    return AdapterMLP()


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


# --------------------------------------------------------------------------- (c) clipping


@pytest.mark.parametrize("engine", ENGINES)
def test_each_example_contribution_is_clipped(engine):
    # One-hot inputs: example i only touches column i of W, so the update's column i is
    # exactly example i's clipped gradient (divided by the batch size q n = n).
    n, classes, clip = 8, 3, 1.0
    scales = torch.tensor([0.01, 0.1, 0.5, 1.0, 3.0, 10.0, 30.0, 100.0])
    x = torch.diag(scales)
    y = torch.arange(n) % classes
    torch.manual_seed(0)
    model = nn.Linear(n, classes, bias=False)
    w0 = model.weight.detach().clone()
    train_dp(model, x, y, DPPlan(1.0, 1, 0.0, clip), lr=1.0, seed=0, engine=engine)
    contrib = (w0 - model.weight.detach()) * n  # column i = clipped gradient of example i
    raw = (torch.softmax(x @ w0.T, 1) - F.one_hot(y, classes)).T * scales  # unclipped, per column
    norms, raw_norms = contrib.norm(dim=0), raw.norm(dim=0)
    assert torch.all(norms <= clip * (1 + 1e-5))
    big = raw_norms > clip
    assert big.any() and (~big).any()
    torch.testing.assert_close(norms[big], torch.full_like(norms[big], clip), rtol=1e-4, atol=0)
    torch.testing.assert_close(contrib[:, ~big], raw[:, ~big], rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- (d) noise and no-noise


@pytest.mark.parametrize("engine", ENGINES)
def test_two_seeds_differ_by_the_expected_noise_scale(engine):
    n, sigma, clip, lr = 64, 1.5, 0.7, 0.05
    x, y = _data(n, d=32, classes=16)
    torch.manual_seed(1)
    start = nn.Linear(32, 16)
    a, b = copy.deepcopy(start), copy.deepcopy(start)
    plan = DPPlan(1.0, 1, sigma, clip)  # q = 1: both seeds see the same batch, only noise differs
    train_dp(a, x, y, plan, lr, seed=1, engine=engine)
    train_dp(b, x, y, plan, lr, seed=2, engine=engine)
    diff = torch.cat([(p - q).flatten() for p, q in zip(a.parameters(), b.parameters())])
    expected = math.sqrt(2) * sigma * clip / n * lr  # batch size q n = n
    assert diff.std().item() == pytest.approx(expected, rel=0.12)  # 528 draws: ~3 % std error


@pytest.mark.parametrize("engine", ENGINES)
def test_no_noise_no_clipping_equals_plain_sgd_on_the_same_poisson_batches(engine):
    x, y = _data()
    q, steps, lr, seed = 0.3, 6, 0.2, 11
    model = _model()
    model.drop.p = 0.0  # dropout would make the reference draw different masks
    ref = copy.deepcopy(model)
    train_dp(model, x, y, DPPlan(q, steps, 0.0, None), lr, seed, engine=engine)

    ref.train()
    ref.norm.eval()  # the trainer keeps frozen BatchNorm in eval mode
    opt = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=lr)
    for idx in poisson_batches(len(x), q, steps, seed):
        opt.zero_grad()
        # DP-SGD divides the summed gradient by the expected batch size q n
        loss = F.cross_entropy(ref(x[idx]), y[idx], reduction="sum") / (q * len(x))
        loss.backward()
        opt.step()
    assert _max_diff(model, ref) < 1e-6


def test_full_batch_without_noise_is_gradient_descent():
    x, y = _data()
    model, ref = _model(), _model()
    model.drop.p = ref.drop.p = 0.0
    train_dp(model, x, y, DPPlan(1.0, 3, 0.0, None), 0.1, seed=0)
    ref.train()
    ref.norm.eval()
    opt = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        opt.step()
    assert _max_diff(model, ref) < 1e-6


def test_ghost_engine_equals_opacus_engine_with_noise_and_clipping():
    x, y = _data()
    plan = DPPlan(0.25, 8, 1.1, 0.5)
    a, b = _model(), _model()
    ra = train_dp(a, x, y, plan, 0.3, seed=5, engine="ghost")
    rb = train_dp(b, x, y, plan, 0.3, seed=5, engine="opacus")
    assert _max_diff(a, b) < 1e-5
    assert _max_diff(a, _model()) > 1e-2  # and it did train
    assert ra.loss == pytest.approx(rb.loss, rel=1e-5)


# --------------------------------------------------------------------------- model hygiene


@pytest.mark.parametrize("engine", ["auto", "opacus"])
def test_frozen_parts_unchanged_and_model_left_plain(engine):
    x, y = _data()
    model = _model()
    model.eval()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "base" in k or "norm" in k}
    rng = torch.get_rng_state()
    res = train_dp(model, x, y, DPPlan(0.2, 5, 1.0, 1.0), 0.1, seed=0, engine=engine)
    assert res.steps == 5 and res.private and res.n_examples == len(x)
    state = model.state_dict()
    assert all(torch.equal(frozen[k], state[k]) for k in frozen)  # bit for bit, buffers too
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG stream is untouched
    assert not model.training and not model.norm.training  # mode restored
    for m in model.modules():
        assert not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
        assert not hasattr(m, "activations") and not hasattr(m, "autograd_grad_sample_hooks")
    for p in model.parameters():
        assert p.grad is None
        assert not any(hasattr(p, a) for a in ("grad_sample", "summed_grad", "_forward_counter"))
    model(x)  # still a plain module


def test_same_seed_same_result_other_seed_other_result():
    x, y = _data()
    plan = DPPlan(0.2, 5, 1.0, 1.0)
    a, b, c = _model(), _model(), _model()
    for m, seed in ((a, 3), (b, 3), (c, 4)):
        train_dp(m, x, y, plan, 0.1, seed)
    assert _max_diff(a, b) == 0.0
    assert _max_diff(a, c) > 0.0


@pytest.mark.parametrize("engine", ENGINES)
def test_empty_poisson_batches_still_take_noisy_steps(engine):
    x, y = _data(n=20)
    q, steps, seed = 0.01, 10, 0
    batches = poisson_batches(len(x), q, steps, seed)
    assert any(len(b) == 0 for b in batches)
    model = _model()
    res = train_dp(model, x, y, DPPlan(q, steps, 1.0, 1.0), 0.1, seed, engine=engine)
    assert res.steps == steps
    assert res.examples_processed == sum(len(b) for b in batches)
    assert _max_diff(model, _model()) > 0


def test_plain_sgd_path_runs_one_epoch():
    x, y = _data(n=70)
    model = _model()
    res = train_dp(model, x, y, None, 0.1, seed=0, non_private_batch_size=32)
    assert (res.steps, res.examples_processed, res.private) == (3, 70, False)
    assert math.isfinite(res.loss)


class ConvAdapter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(1, 4, 3, padding=1).requires_grad_(False)
        self.adapter = nn.Conv2d(4, 4, 1, bias=False)
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        h = torch.relu(self.backbone(x))
        return self.head((h + self.adapter(h)).flatten(1))


def test_conv_adapters_train_through_opacus():
    torch.manual_seed(0)
    model = ConvAdapter()
    start = copy.deepcopy(model)
    x, y = torch.randn(30, 1, 6, 6), torch.randint(0, 3, (30,))
    with pytest.raises(ValueError, match="engine='opacus'"):
        train_dp(model, x, y, DPPlan(0.3, 2, 1.0, 1.0), 0.1, 0, engine="ghost")
    train_dp(model, x, y, DPPlan(0.3, 4, 1.0, 1.0), 0.1, 0)  # auto -> opacus
    assert torch.equal(model.backbone.weight, start.backbone.weight)
    assert not torch.equal(model.adapter.weight, start.adapter.weight)


def test_unsupported_models_fail_clearly():
    x, y = _data()
    bn = nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    with pytest.raises(ValueError, match="BatchNorm"):
        train_dp(bn, x, y, DPPlan(0.2, 1, 1.0, 1.0), 0.1, 0)

    class Functional(nn.Module):  # trainable Linear used without its forward()
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(12, 3)

        def forward(self, x):
            return F.linear(x, self.fc.weight, self.fc.bias)

    with pytest.raises(RuntimeError, match="engine='opacus'"):
        train_dp(Functional(), x, y, DPPlan(0.2, 1, 1.0, 1.0), 0.1, 0)
    with pytest.raises(ValueError, match="no trainable"):
        train_dp(nn.Linear(12, 3).requires_grad_(False), x, y, None, 0.1, 0)


# --------------------------------------------------------------------------- with fedcascade.models


@pytest.mark.parametrize("input_shape", [(12,), (1, 8, 8)], ids=["mlp", "cnn"])
def test_peft_adapter_models_from_fedcascade_models(input_shape):
    pytest.importorskip("peft")
    from fedcascade.configtools import build
    from fedcascade.models import ModelConfig, adapter_model, build_backbone, trainable_arrays

    cfg = build(ModelConfig, {"hidden": [16], "embedding_dim": 8, "cnn_channels": [4]}, "model")
    backbone = build_backbone(cfg, input_shape, 3, seed=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, *input_shape, generator=g), torch.randint(0, 3, (40,), generator=g)
    plan = DPPlan(0.25, 4, 1.0, 1.0)
    models = {}
    for engine in ("auto", "opacus"):
        model = adapter_model(backbone, cfg, rank=2, seed=0)
        frozen = {
            k: v.clone()
            for k, v in model.state_dict().items()
            if "lora" not in k and "head" not in k
        }
        before = trainable_arrays(model)
        train_dp(model, x, y, plan, lr=0.5, seed=0, engine=engine)
        after = trainable_arrays(model)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())
        assert any(not (before[k] == after[k]).all() for k in before)  # LoRA B / head moved
        models[engine] = model
    # the MLP takes the ghost path under "auto", the CNN (Conv2d LoRA) the Opacus one: same answer
    assert _max_diff(models["auto"], models["opacus"]) < 1e-5
