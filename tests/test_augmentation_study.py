"""The augmentation study's settings and verdict logic."""

from __future__ import annotations

import pytest
import torch

from shared.specs import long_tail_counts
from worker.augmentation_study import (
    ARMS,
    ExperimentData,
    Outcome,
    Scores,
    Setting,
    class_balanced_weights,
    extra_batches,
    gan_share,
    mix_real_pairs,
    score,
    source_prior,
    study_arms,
    training_prior,
)
from worker.ratio_sweep import sweep, verdict
from worker.teacher import sample_targets


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


def uniform_scores(accuracy: float, adjusted: float | None = None, classes: int = 3) -> Scores:
    """A classifier right on ACCURACY of every class (ADJUSTED after logit adjustment)."""
    return Scores(accuracy, [accuracy] * classes, [accuracy if adjusted is None else adjusted] * classes)


def seeds(setting: Setting, accuracies: list[float]) -> Outcome:
    return Outcome(setting, [uniform_scores(value) for value in accuracies])


def outcomes(a: list[float], b: list[float], c: list[float], d: list[float]) -> list[Outcome]:
    return [
        seeds(Setting("(a) real", "a"), a), seeds(Setting("(b) real + flip/crop", "b", classic=True), b),
        seeds(Setting("(c) ratio 1", "c", ratio=1.0), c), seeds(Setting("(d) ratio 1", "d", ratio=1.0, classic=True), d),
    ]


def test_the_legacy_sweeps_verdict_compares_each_gan_arm_with_its_baseline():
    helped = verdict(outcomes([0.80, 0.81], [0.82, 0.83], [0.85, 0.86], [0.84, 0.85]))
    assert helped.best.setting.arm == "c"
    assert helped.delta_c == pytest.approx(0.05) and helped.delta_d == pytest.approx(0.02)
    hurt = verdict(outcomes([0.80, 0.81], [0.82, 0.83], [0.78, 0.79], [0.82, 0.83]))
    assert hurt.best.setting.arm in ("b", "d") and hurt.delta_c == pytest.approx(-0.02) and hurt.delta_d == pytest.approx(0)


def test_every_arm_is_registered_with_a_role_and_a_colour():
    study = study_arms(imbalanced=True, ceiling=True) + sweep([1.0], [0.5], [0.9])
    assert {setting.arm for setting in study} <= set(ARMS)
    with pytest.raises(ValueError, match="arm 'gan-new', which ARMS does not list; add it there with its role and colour"):
        Setting("real + a new kind of GAN batch", "gan-new")


def test_the_study_arms_differ_only_in_their_second_batch_or_weights():
    balanced = study_arms(imbalanced=False, ceiling=True)
    assert [arm.arm for arm in balanced] == ["real", "mixup", "gan-hard", "gan-soft", "gan-agree", "ceiling-teacher",
                                             "ceiling-true"]
    assert all(arm.classic and arm.ratio == 0 and arm.weight == 1 and not arm.pretrain for arm in balanced)
    assert [arm.uses_gan for arm in balanced] == [False, False, True, True, True, False, False]
    assert [arm.ceiling for arm in balanced] == [False] * 5 + [True] * 2
    long_tail = study_arms(imbalanced=True, ceiling=False)
    assert [arm.arm for arm in long_tail] == ["real", "balanced", "mixup", "gan-hard", "gan-soft", "gan-agree",
                                              "gan-soft-prior"]
    assert long_tail[1].class_balanced and not long_tail[1].extra and long_tail[-1].uses_gan


def test_a_long_tail_falls_exponentially_from_per_class_to_per_class_over_the_imbalance():
    counts = long_tail_counts(500, 50, 10, seed=0)
    assert sorted(counts, reverse=True) == [500, 324, 210, 136, 88, 57, 37, 24, 15, 10] and sum(counts) == 1401
    assert long_tail_counts(500, 50, 10, seed=1) != counts  # which class is rare is drawn by the seed
    assert sorted(long_tail_counts(500, 50, 10, seed=1)) == sorted(counts)
    assert long_tail_counts(20, 1, 4, seed=3) == [20] * 4


class FixedTeacher:
    """A stand-in teacher that is sure every image is of class 1."""

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.full((len(images),), 1), 3).float()


def study_data() -> ExperimentData:
    real = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8)
    synthetic = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(30) % 3
    probs = torch.nn.functional.one_hot(torch.full((30,), 2), 3).float() * 0.6 + 0.4 / 3  # the teacher says 2
    held_out = torch.randint(0, 256, (9, 1, 8, 8), dtype=torch.uint8)
    return ExperimentData(real, torch.arange(12) % 3, synthetic, labels, real, torch.arange(12) % 3, 3,
                          teacher=FixedTeacher(), synthetic_probs=probs, extra_batch=8,  # type: ignore[arg-type]
                          ceiling_images=held_out, ceiling_labels=torch.arange(9) % 3, ceiling_probs=torch.full((9, 3), 1 / 3))


@pytest.mark.parametrize("sources", [("gan_hard",), ("gan_soft",), ("gan_agree",), ("mixup",), ("mixup", "gan_soft"),
                                     ("held_out_true",), ("held_out_teacher",)])
def test_every_second_batch_has_the_same_size_and_its_sources_targets(sources):
    data = study_data()
    images, targets = extra_batches(data, sources)(torch.Generator().manual_seed(0))
    assert images.shape == (8, 1, 8, 8) and images.dtype == torch.uint8 and targets.shape == (8, 3)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    teacher_view = data.synthetic_probs[0]
    if sources == ("gan_soft",):
        assert all(torch.allclose(target, teacher_view) for target in targets)
    if sources == ("gan_hard",):
        assert set(targets.max(1).values.tolist()) == {1.0}
    if sources == ("gan_agree",):  # one-hot where the label is the teacher's 2, the teacher's view elsewhere
        assert all(torch.allclose(target, teacher_view) or target.tolist() == [0, 0, 1] for target in targets)
        assert any(target.tolist() == [0, 0, 1] for target in targets)
    if sources == ("mixup", "gan_soft"):
        assert (targets[:4, 1] == 1).all() and torch.allclose(targets[4:], teacher_view.expand(4, 3))
    if sources[0].startswith("held_out"):
        assert all(any(torch.equal(image, candidate) for candidate in data.ceiling_images) for image in images)


def test_a_prior_draw_picks_each_class_as_often_as_the_real_subset_has_it():
    data = study_data()
    data.real_labels = torch.tensor([0] * 9 + [1, 1, 2])  # shares 3/4, 1/6, 1/12; the GAN pool is balanced
    drawn = data.drawer("gan_soft_prior")(6000, torch.Generator().manual_seed(0))
    shares = torch.bincount(data.synthetic_labels[drawn], minlength=3) / 6000
    assert shares.tolist() == pytest.approx([0.75, 1 / 6, 1 / 12], abs=0.02)
    assert len(drawn.unique()) == 30  # every pool image of each class is drawn, not only the first ones
    assert torch.bincount(data.synthetic_labels[data.drawer("gan_soft")(6000, torch.Generator())], minlength=3).min() > 1800
    images, targets = extra_batches(data, ("gan_soft_prior",))(torch.Generator().manual_seed(0))
    assert images.shape == (8, 1, 8, 8) and torch.allclose(targets, data.synthetic_probs[:8])
    # logit adjustment takes out what the draw gives: each class's mean target, weighed by the real shares
    data.synthetic_probs = torch.nn.functional.one_hot(data.synthetic_labels, 3).float()  # a teacher that agrees
    assert source_prior(data, "gan_soft_prior").tolist() == pytest.approx([0.75, 1 / 6, 1 / 12])
    assert source_prior(data, "gan_soft").tolist() == pytest.approx([1 / 3] * 3)


def test_the_agree_rule_trusts_the_label_only_where_the_teacher_backs_it():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    labels = torch.tensor([0, 1])
    assert sample_targets("agree", labels, probs).tolist() == [[1.0, 0.0, 0.0], probs[1].tolist()]
    assert sample_targets("hard", labels, probs).tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    assert torch.equal(sample_targets("teacher", labels, probs), probs)


def test_logit_adjustment_takes_out_the_prior_the_classifier_was_trained_on():
    data = study_data()
    data.real_labels = torch.tensor([0] * 9 + [1, 1, 2])  # a head class and two rare ones
    head = training_prior(data, Setting("real", "real"), batch=12)
    assert head.tolist() == pytest.approx([0.75, 1 / 6, 1 / 12])
    assert training_prior(data, Setting("cb", "balanced", class_balanced=True), batch=12).tolist() == pytest.approx([1 / 3] * 3)
    assert class_balanced_weights(data.real_labels, 3).tolist() == pytest.approx([1 / 9] * 9 + [0.5, 0.5, 1.0])
    # a second batch of 8 drawn class-balanced with hard labels, beside real batches of 12
    mixed = training_prior(data, Setting("gan", "gan-hard", extra=("gan_hard",)), batch=12)
    assert mixed.tolist() == pytest.approx([(12 * 0.75 + 8 / 3) / 20, (12 / 6 + 8 / 3) / 20, (1 + 8 / 3) / 20])

    class HeadBiased(torch.nn.Module):
        """Logits that lean towards class 0 by log 3: right on class 0, wrong on the others, unless adjusted."""

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            truth = images[:, 0, 0, 0].long()
            return torch.nn.functional.one_hot(truth, 3).float() + torch.tensor([1.1, 0.0, 0.0])

    images = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor([0, 1, 2])
    scores = score(HeadBiased(), images, torch.tensor([0, 1, 2]), torch.tensor([0.75, 0.125, 0.125]))  # type: ignore[arg-type]
    assert scores.class_accuracy == [1.0, 0.0, 0.0] and scores.class_accuracy_adjusted == [1.0, 1.0, 1.0]
    assert scores.accuracy == pytest.approx(1 / 3) and scores.balanced(adjusted=True) == 1.0
    assert scores.of_classes([1, 2], adjusted=False) == 0.0


def test_the_rarest_third_is_the_classes_with_the_fewest_real_images():
    data = study_data()
    data.num_classes = 6
    data.real_labels = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4, 5, 5, 5, 5, 5])
    assert data.rarest_third() == [1, 4]


def test_mixup_mixes_two_real_images_pixel_by_pixel():
    images = torch.stack([torch.zeros(1, 4, 4, dtype=torch.uint8), torch.full((1, 4, 4), 200, dtype=torch.uint8)])
    mixed = mix_real_pairs(images, 64, torch.Generator().manual_seed(0))
    assert mixed.shape == (64, 1, 4, 4) and (mixed == mixed[:, :, :1, :1]).all()  # one share per image
    assert len(set(mixed[:, 0, 0, 0].tolist())) > 10  # shares spread over (0, 1)


def test_the_gan_share_is_best_with_minus_best_without_and_warns_inside_the_noise():
    arms = {arm.arm: arm for arm in study_arms(imbalanced=True, ceiling=True)}

    def outcome(arm: str, accuracies: list[float]) -> Outcome:
        return seeds(arms[arm], accuracies)

    clear = gan_share([outcome("real", [0.80, 0.81]), outcome("mixup", [0.83, 0.84]), outcome("gan-soft", [0.86, 0.87]),
                       outcome("ceiling-true", [0.89, 0.90]), outcome("ceiling-teacher", [0.95, 0.96])], rare=[0])
    assert clear.share == pytest.approx(0.03) and clear.over_real == pytest.approx(0.06)
    assert clear.helps and clear.warning is None and clear.without_gan.setting.arm == "mixup"
    # the ceiling arms count on neither side; the true-label one measures what a perfect generator would add
    assert clear.ceiling is not None and clear.ceiling.setting.arm == "ceiling-true"
    assert clear.ceiling_gain == pytest.approx(0.06) and clear.captured == pytest.approx(0.5)
    noisy = gan_share([outcome("real", [0.80, 0.81]), outcome("mixup", [0.80, 0.88]), outcome("gan-agree", [0.83, 0.87])],
                      rare=[0])
    assert not noisy.helps and "within the seed-to-seed noise" in (noisy.warning or "") and noisy.ceiling is None
    worse = gan_share([outcome("real", [0.80, 0.81]), outcome("mixup", [0.84, 0.85]), outcome("gan-hard", [0.79, 0.80])],
                      rare=[0])
    assert worse.share < 0 and "add nothing here" in (worse.warning or "") and worse.captured is None


def test_each_side_of_the_verdict_takes_its_better_scoring():
    arms = {arm.arm: arm for arm in study_arms(imbalanced=True, ceiling=False)}
    # real gains from logit adjustment, the class-balanced arm does not; the GAN arm is best plainly
    real = Outcome(arms["real"], [Scores(0.70, [0.9, 0.6, 0.6], [0.8, 0.8, 0.8])] * 2)
    weighted = Outcome(arms["balanced"], [Scores(0.78, [0.78] * 3, [0.78] * 3)] * 2)
    gan = Outcome(arms["gan-hard"], [Scores(0.83, [0.8, 0.85, 0.84], [0.7, 0.7, 0.7])] * 2)
    share = gan_share([real, weighted, gan], rare=[1, 2])
    assert share.without_gan.setting.arm == "real" and share.without_gan.adjusted and share.without_gan.mean == pytest.approx(0.8)
    assert not share.with_gan.adjusted and share.with_gan.mean == pytest.approx(0.83)
    assert share.share == pytest.approx(0.03) and share.rare_share == pytest.approx(0.845 - 0.8)
    assert share.with_gan.label == "real + GAN, hard labels" and share.without_gan.label == "real, logit-adjusted"
