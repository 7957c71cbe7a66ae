"""The [privacy] config section, DP plans on the wire, and planned schedules."""

from __future__ import annotations

import pytest

from fedcascade.configtools import build
from fedcascade.errors import ConfigError
from fedcascade.privacy import DPPlan, PrivacyConfig, planned_schedule, steps_per_epoch


def test_defaults_and_derived_values():
    cfg = build(PrivacyConfig, None, "privacy")
    assert (cfg.enabled, cfg.target_epsilon, cfg.delta, cfg.accountant) == (True, 3.0, None, "prv")
    assert cfg.delta_for(6400) == pytest.approx(1e-5)
    assert cfg.sample_rate_for(6400) == pytest.approx(32 / 6400)
    assert cfg.sample_rate_for(10) == 1.0  # capped
    assert cfg.selection_epsilon == pytest.approx(0.09)
    assert cfg.training_epsilon == pytest.approx(2.91)


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"target_epsilon": 0}, "privacy.target_epsilon"),
        ({"delta": 1.5}, "privacy.delta"),
        ({"accountant": "gdp"}, "privacy.accountant"),
        ({"max_grad_norm": -1.0}, "privacy.max_grad_norm"),
        ({"batch_size": 0}, "privacy.batch_size"),
        ({"selection_epsilon_fraction": 1.0}, "privacy.selection_epsilon_fraction"),
        ({"target_epsilonn": 3.0}, "privacy.target_epsilonn"),
    ],
)
def test_bad_config_names_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        build(PrivacyConfig, raw, "privacy")
    assert err.value.key == key


def test_configured_delta_must_be_below_one_over_n():
    cfg = build(PrivacyConfig, {"delta": 1e-4}, "privacy")
    assert cfg.delta_for(5000) == 1e-4
    with pytest.raises(ConfigError, match="1/n_train"):
        cfg.delta_for(20_000)


def test_plan_round_trips_through_a_flat_config_record():
    for plan in (DPPlan(0.05, 200, 1.3, 1.0), DPPlan(1.0, 1, 0.0, None)):
        record = plan.to_config()
        assert all(isinstance(v, (int, float)) for v in record.values())
        assert DPPlan.from_config({**record, "lr": 0.1, "cluster": 2}) == plan


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (
            dict(sample_rate=0.0, steps=1, noise_multiplier=1.0, max_grad_norm=1.0),
            "plan.sample_rate",
        ),
        (dict(sample_rate=0.1, steps=-1, noise_multiplier=1.0, max_grad_norm=1.0), "plan.steps"),
        (
            dict(sample_rate=0.1, steps=1, noise_multiplier=-0.1, max_grad_norm=1.0),
            "plan.noise_multiplier",
        ),
        (
            dict(sample_rate=0.1, steps=1, noise_multiplier=1.0, max_grad_norm=None),
            "plan.max_grad_norm",
        ),
    ],
)
def test_invalid_plans_are_rejected(kwargs, key):
    with pytest.raises(ConfigError) as err:
        DPPlan(**kwargs)
    assert err.value.key == key


def test_plan_missing_from_message():
    with pytest.raises(ConfigError, match="dp_steps"):
        DPPlan.from_config(
            {"dp_sample_rate": 0.1, "dp_noise_multiplier": 1.0, "dp_max_grad_norm": 1.0}
        )


def test_planned_schedule():
    assert steps_per_epoch(6400, 32) == 200
    assert steps_per_epoch(10, 32) == 1
    assert planned_schedule(6400, 32, rounds=5) == [(0.005, 1000)]
    assert planned_schedule(6400, 32, rounds=5, full_batch_first_round=True) == [
        (1.0, 1),
        (0.005, 800),
    ]
    assert planned_schedule(6400, 32, rounds=1, local_epochs=2, full_batch_first_round=True) == [
        (1.0, 2)
    ]
