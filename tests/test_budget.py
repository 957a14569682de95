"""Sizing the demo's GAN to a time budget from throughput measured on this machine."""

from __future__ import annotations

import dataclasses

import pytest

from shared.settings import Settings
from shared.specs import TrainSpec
from worker.budget import Rates, measure_rates, plan_budget

RATES = Rates(gan=10.0, teacher=50.0, reference=40.0, scorer=100.0, sampling=1000.0)


def test_the_gan_gets_what_the_fixed_stages_leave_of_the_budget() -> None:
    plan = plan_budget(300, RATES, teacher_steps=3000, reference_steps=1500, scorer_steps=1000, images=10_000,
                       fixed_s=30, min_gan_steps=100, max_gan_steps=6000)
    # teacher 60 s, reference 37.5 s, generation 10 s, CAS 20 s, fixed 30 s: 142.5 s of 300 left to the GAN
    assert plan.gan_steps == 1425
    assert plan.seconds == {"GAN": 142.5, "measuring": 0.0, "validation curve": 0.0, "teacher": 60.0,
                            "reference classifier": 37.5, "generation": 10.0, "CAS classifiers": 20.0,
                            "data and metrics": 30.0}
    assert plan.total_s == pytest.approx(300)


def test_the_time_the_probe_took_comes_out_of_the_gans_share() -> None:
    plan = plan_budget(300, RATES, 3000, 1500, 1000, 10_000, 30, 100, 6000, spent_s=20)
    assert plan.seconds["measuring"] == 20 and plan.gan_steps == 1225  # 142.5 - 20 s at 10 steps/s
    assert plan.total_s == pytest.approx(300)


def test_the_validation_curves_measurements_come_out_of_the_gans_share() -> None:
    rates = dataclasses.replace(RATES, validation_s=0.5)
    plan = plan_budget(300, rates, 3000, 1500, 1000, 10_000, 30, 100, 6000, measurements=21)
    assert plan.seconds["validation curve"] == 10.5 and plan.gan_steps == 1320  # 142.5 - 10.5 s at 10 steps/s
    assert plan.total_s == pytest.approx(300)


def test_a_stored_reference_classifier_leaves_its_time_to_the_gan() -> None:
    stored = plan_budget(300, RATES, 3000, 0, 1000, 10_000, 30, 100, 6000)
    assert stored.gan_steps == 1800 and stored.seconds["reference classifier"] == 0


def test_the_gan_never_trains_fewer_than_the_minimum_nor_more_than_the_maximum() -> None:
    tight = plan_budget(60, RATES, 3000, 1500, 1000, 10_000, 30, 300, 6000)
    assert tight.gan_steps == 300 and tight.total_s > 60  # over budget, and the plan says so
    roomy = plan_budget(3600, RATES, 3000, 1500, 1000, 10_000, 30, 300, 6000)
    assert roomy.gan_steps == 6000 and roomy.total_s < 3600


def test_the_probe_times_every_kind_of_step_of_a_small_data_recipe() -> None:
    spec = TrainSpec(job_id="t-probe", dataset="fake", per_class=20, width=8, teacher_width=8, batch_size=16)
    rates = measure_rates(spec, Settings())
    assert min(rates.gan, rates.teacher, rates.reference, rates.scorer, rates.sampling, rates.validation_s) > 0
    assert measure_rates(TrainSpec(job_id="t-probe", dataset="fake", per_class=20, width=8, teacher_width=8, batch_size=16,
                                   validation=0), Settings()).validation_s == 0  # no curve, nothing to measure
