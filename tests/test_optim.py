"""Optimizers by name, parameter groups and schedules against known values and torch's own schedulers."""

import math

import pytest
import torch
from torch import nn

from pixelwise.config import OptimConfig
from pixelwise.engine.ema import WeightEma
from pixelwise.errors import ConfigError
from pixelwise.optim import OPTIMIZERS, _construct, create_optimizer, lr_factor, param_groups, set_lr


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        self.head = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.head(self.encoder(x))


def _cfg(**kw):
    return OptimConfig(**{"warmup": 0.0, "min_lr_ratio": 0.0, **kw})


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_builds_by_name_and_descends(name):
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(4, 1, 6, 6)
    lr = {"adadelta": 1.0, "gd": 0.05, "sgd": 0.05}.get(name, 1e-2)
    opt = create_optimizer(model, OptimConfig(name=name, lr=lr, weight_decay=0.0))
    set_lr(opt, lr)
    losses = []
    for _ in range(15):
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_sgd_momentum_and_nesterov_reach_torch():
    opt = create_optimizer(Tiny(), OptimConfig(name="sgd", momentum=0.8, nesterov=True))
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["momentum"] == 0.8 and opt.defaults["nesterov"] is True
    gd = create_optimizer(Tiny(), OptimConfig(name="gd", momentum=0.8))
    assert gd.defaults["momentum"] == 0.0


def test_optimizer_options_are_passed_and_checked():
    opt = create_optimizer(Tiny(), OptimConfig(name="adam", options={"betas": [0.8, 0.95], "amsgrad": True}))
    assert tuple(opt.defaults["betas"]) == (0.8, 0.95) and opt.defaults["amsgrad"] is True
    with pytest.raises(ConfigError, match="momentun.*Adam.*betas"):
        create_optimizer(Tiny(), OptimConfig(name="adam", options={"momentun": 0.9}))


def test_fused_kernels_where_the_class_has_them_else_foreach_and_options_decide():
    adamw = create_optimizer(Tiny(), OptimConfig(name="adamw"))
    assert adamw.defaults["fused"] is True and not adamw.defaults["foreach"]  # CPU has fused AdamW
    nadam = create_optimizer(Tiny(), OptimConfig(name="nadam"))  # no fused NAdam
    assert nadam.defaults["foreach"] is True
    plain = create_optimizer(Tiny(), OptimConfig(name="adamw", options={"foreach": False}))
    assert not plain.defaults["fused"] and plain.defaults["foreach"] is False

    class NoFusedHere(torch.optim.SGD):  # as Adagrad's fused kernel on a GPU: the class has it, the device not
        def __init__(self, params, lr=1e-3, foreach=None, fused=None):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be on a supported device")
            super().__init__(params, lr=lr, foreach=foreach)

    fallback = _construct(NoFusedHere, param_groups(Tiny(), 0.0), _cfg(name="sgd"))
    assert fallback.defaults["foreach"] is True
    with pytest.raises(ConfigError, match="requires all the params"):  # asked for by name: said, not bypassed
        _construct(NoFusedHere, param_groups(Tiny(), 0.0), _cfg(name="sgd", options={"fused": True}))


def test_param_groups_decay_and_encoder_multiplier():
    model = Tiny()
    groups = param_groups(model, weight_decay=0.05, encoder_lr_mult=0.1)
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    for g in groups:
        in_encoder = {id(p) in encoder_ids for p in g["params"]}
        assert len(in_encoder) == 1
        assert g["lr_scale"] == (0.1 if in_encoder.pop() else 1.0)
        assert g["weight_decay"] == (0.05 if all(p.ndim > 1 for p in g["params"]) else 0.0)
        assert all(p.ndim > 1 for p in g["params"]) or all(p.ndim <= 1 for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    opt = create_optimizer(model, OptimConfig(lr=1.0, encoder_lr_mult=0.1))
    set_lr(opt, 2.0)
    assert sorted({g["lr"] for g in opt.param_groups}) == [pytest.approx(0.2), 2.0]
    with pytest.raises(ConfigError, match="no encoder"):
        create_optimizer(nn.Conv2d(1, 1, 1), OptimConfig(encoder_lr_mult=0.1))


def _torch_schedule(scheduler_factory, steps: int) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = scheduler_factory(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_cosine_matches_torch():
    n = 50
    ours = [lr_factor(i / n, _cfg(scheduler="cosine")) for i in range(n)]
    theirs = _torch_schedule(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=n), n)
    assert ours == pytest.approx(theirs, abs=1e-9)


def test_poly_matches_torch():
    n = 40
    ours = [lr_factor(i / n, _cfg(scheduler="poly", poly_power=0.9)) for i in range(n)]
    theirs = _torch_schedule(lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=n, power=0.9), n)
    assert ours == pytest.approx(theirs, abs=1e-9)


def test_onecycle_known_points_and_torch():
    c = _cfg(scheduler="onecycle")
    assert lr_factor(0.0, c) == pytest.approx(1 / 25)
    assert lr_factor(0.15, c) == pytest.approx((1 / 25 + 1) / 2)
    assert lr_factor(0.3, c) == pytest.approx(1.0)
    assert lr_factor(0.65, c) == pytest.approx((1 + 1 / 25e4) / 2)
    assert lr_factor(1.0, c) == pytest.approx(1 / 25e4)
    n = 1001  # torch counts phases in steps (ends at step 0.3 n - 1); close for many steps
    ours = [lr_factor(i / (n - 1), c) for i in range(n)]
    theirs = _torch_schedule(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=n), n)
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 0.01


def test_step_warmup_and_constant():
    c = _cfg(scheduler="step", step_milestones=[0.5, 0.75], step_gamma=0.1)
    assert [lr_factor(p, c) for p in (0.0, 0.49, 0.5, 0.8, 1.0)] == pytest.approx([1, 1, 0.1, 0.01, 0.01])
    w = OptimConfig(scheduler="constant", warmup=0.2)
    assert [lr_factor(p, w) for p in (0.05, 0.1, 0.2, 0.9)] == pytest.approx([0.25, 0.5, 1.0, 1.0])
    cos = OptimConfig(scheduler="cosine", warmup=0.2, min_lr_ratio=0.1)
    assert lr_factor(0.6, cos) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    with pytest.raises(ValueError):
        OptimConfig(step_milestones=[0.8, 0.5])


def test_ema_known_values_and_buffers():
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema = WeightEma(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model[1].running_mean.fill_(2.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)  # first decay: min(0.9, 2 / 11)
    d = 2 / 11
    assert ema.module[0].weight.item() == pytest.approx(d * 1 + (1 - d) * 3)
    assert ema.module[1].running_mean.item() == pytest.approx((1 - d) * 2)
    assert ema.module[1].num_batches_tracked.item() == 7
    for _ in range(200):
        ema.update(model)
    assert ema.current_decay() == 0.9
    assert ema.module[0].weight.item() == pytest.approx(3.0, abs=1e-6)
    assert not any(p.requires_grad for p in ema.module.parameters())
    again = WeightEma(model, decay=0.9)
    again.load_state_dict(ema.state_dict())
    assert again.updates == ema.updates and torch.equal(again.module[0].weight, ema.module[0].weight)


def test_lr_factor_is_bounded():
    for sched in ("constant", "step", "poly", "cosine", "onecycle"):
        c = OptimConfig(scheduler=sched)
        values = [lr_factor(i / 100, c) for i in range(101)]
        assert all(0 < v <= 1.0 + 1e-12 for v in values), sched
        assert not any(math.isnan(v) for v in values)


def test_lr_suggestion_is_the_steepest_descent_before_the_minimum():
    import numpy as np

    from pixelwise.engine.lr_find import suggest_lr

    lrs = np.geomspace(1e-5, 1, 11)
    loss = np.array([2.0, 2.0, 1.9, 1.5, 0.8, 0.6, 0.55, 0.5, 0.9, 3.0, 9.0])
    # central differences per decade: -0.5 at 1e-4, -1.1 at 10^-3.5, -0.9 at 1e-3: steepest at 10^-3.5
    assert suggest_lr(lrs, loss) == pytest.approx(10 ** -3.5)
    assert suggest_lr(lrs, loss) < lrs[np.argmin(loss)]


@pytest.mark.parametrize("name", ["lr", "weight_decay"])
def test_lr_and_weight_decay_in_options_are_refused_not_ignored(name):
    # each parameter group carries optim.lr and optim.weight_decay, which would override the option silently
    with pytest.raises(ConfigError, match=f"optim.options.{name} is not used: set optim.{name} instead"):
        create_optimizer(Tiny(), OptimConfig(name="adamw", options={name: 0.5}))


def test_an_option_of_the_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"optim \(adamw\): .*check optim.options \(betas: 0.9 \(default"):
        create_optimizer(Tiny(), OptimConfig(name="adamw", options={"betas": 0.9}))
