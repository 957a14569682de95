"""The augmentation study's settings and verdict logic."""

from __future__ import annotations

import pytest

from worker.augmentation_study import Outcome, Setting, sweep, verdict


def test_the_sweep_covers_every_way_of_using_synthetic_data():
    settings = sweep([0.5, 2.0], [0.25], [0.9])
    names = [setting.name for setting in settings]
    assert names[:2] == ["(a) real", "(b) real + flip/crop"]
    for arm in ("c", "d"):
        ours = [s for s in settings if s.arm == arm]
        assert [s.ratio for s in ours if s.weight == 1 and not s.min_confidence and not s.pretrain] == [0.5, 2.0]
        assert any(s.weight == 0.25 for s in ours) and any(s.min_confidence == 0.9 for s in ours)
        assert any(s.pretrain for s in ours) and all(s.classic == (arm == "d") for s in ours)
    assert len(set(names)) == len(names)


def outcomes(a: list[float], b: list[float], c: list[float], d: list[float]) -> list[Outcome]:
    return [
        Outcome(Setting("(a) real", "a"), a), Outcome(Setting("(b) real + flip/crop", "b", classic=True), b),
        Outcome(Setting("(c) ratio 1", "c", ratio=1.0), c), Outcome(Setting("(d) ratio 1", "d", ratio=1.0, classic=True), d),
    ]


def test_the_verdict_names_the_gain_and_warns_when_nothing_helps():
    helped = verdict(outcomes([0.80, 0.81], [0.82, 0.83], [0.85, 0.86], [0.84, 0.85]))
    assert helped.helps and helped.warning is None and helped.best.setting.arm == "c"
    assert helped.delta_c == pytest.approx(0.05) and helped.delta_d == pytest.approx(0.02)
    hurt = verdict(outcomes([0.80, 0.81], [0.82, 0.83], [0.78, 0.79], [0.82, 0.83]))
    assert not hurt.helps and "do not help" in (hurt.warning or "")
    noisy = verdict(outcomes([0.70, 0.90], [0.82, 0.83], [0.75, 0.95], [0.82, 0.83]))
    assert not noisy.helps, "a gain inside the seed-to-seed noise is not a gain"
