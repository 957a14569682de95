"""The augmentation study's settings and verdict logic."""

from __future__ import annotations

import pytest
import torch

from worker.augmentation_study import (
    STUDY_ARMS,
    ExperimentData,
    Outcome,
    Setting,
    extra_batches,
    gan_share,
    mix_real_pairs,
    sweep,
    verdict,
)


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


def test_the_study_arms_differ_only_in_their_second_batch():
    assert [arm.arm for arm in STUDY_ARMS] == ["real", "gan-hard", "mixup", "gan-soft", "both"]
    assert all(arm.classic and arm.ratio == 0 and arm.weight == 1 and not arm.pretrain for arm in STUDY_ARMS)
    assert [arm.uses_gan for arm in STUDY_ARMS] == [False, True, False, True, True]


class FixedTeacher:
    """A stand-in teacher that is sure every image is of class 1."""

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.full((len(images),), 1), 3).float()


def study_data() -> ExperimentData:
    real = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8)
    synthetic = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(30) % 3
    return ExperimentData(real, torch.arange(12) % 3, synthetic, labels, real, torch.arange(12) % 3, 3,
                          teacher=FixedTeacher(), synthetic_probs=torch.full((30, 3), 1 / 3), extra_batch=8)  # type: ignore[arg-type]


@pytest.mark.parametrize("sources", [("gan_hard",), ("gan_soft",), ("mixup",), ("mixup", "gan_soft")])
def test_every_second_batch_has_the_same_size_and_its_sources_targets(sources):
    data = study_data()
    images, targets = extra_batches(data, sources)(torch.Generator().manual_seed(0))
    assert images.shape == (8, 1, 8, 8) and images.dtype == torch.uint8 and targets.shape == (8, 3)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    if sources == ("gan_soft",):
        assert torch.allclose(targets, torch.full((8, 3), 1 / 3))
    if sources == ("mixup", "gan_soft"):
        assert (targets[:4, 1] == 1).all() and torch.allclose(targets[4:], torch.full((4, 3), 1 / 3))


def test_mixup_mixes_two_real_images_pixel_by_pixel():
    images = torch.stack([torch.zeros(1, 4, 4, dtype=torch.uint8), torch.full((1, 4, 4), 200, dtype=torch.uint8)])
    mixed = mix_real_pairs(images, 64, torch.Generator().manual_seed(0))
    assert mixed.shape == (64, 1, 4, 4) and (mixed == mixed[:, :, :1, :1]).all()  # one share per image
    assert len(set(mixed[:, 0, 0, 0].tolist())) > 10  # shares spread over (0, 1)


def test_the_gan_share_is_best_with_minus_best_without_and_warns_inside_the_noise():
    arms = {arm.arm: arm for arm in STUDY_ARMS}

    def outcome(arm: str, accuracies: list[float]) -> Outcome:
        return Outcome(arms[arm], accuracies)

    clear = gan_share([outcome("real", [0.80, 0.81]), outcome("mixup", [0.83, 0.84]), outcome("gan-soft", [0.86, 0.87])])
    assert clear.share == pytest.approx(0.03) and clear.over_real == pytest.approx(0.06)
    assert clear.helps and clear.warning is None and clear.without_gan.setting.arm == "mixup"
    noisy = gan_share([outcome("real", [0.80, 0.81]), outcome("mixup", [0.80, 0.88]), outcome("both", [0.83, 0.87])])
    assert not noisy.helps and "within the seed-to-seed noise" in (noisy.warning or "")
    worse = gan_share([outcome("real", [0.80, 0.81]), outcome("mixup", [0.84, 0.85]), outcome("gan-hard", [0.79, 0.80])])
    assert worse.share < 0 and "add nothing here" in (worse.warning or "")
