"""A training job's validation split, its quality curve and its best checkpoint (worker/validation.py), run in-process
through ``run_training``; test_resume.py kills a real worker mid-curve, test_dashboard.py draws the curve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
import torch

from shared.lifecycle import JobStopped, StopReason
from shared.liveness import Attempt
from shared.models import read_card
from shared.progress import QualityPoint, TrainProgress, best_point, better, measurements_since_best
from shared.settings import Settings
from shared.specs import TrainSpec
from shared.storage import FileStorage
from tests.support.processes import run_cli
from tests.support.threads import ONE_THREAD
from worker import checkpoint
from worker.checkpoint import load_model
from worker.data import ImageData, load_dataset, split_validation
from worker.train import TrainHooks, run_training

CPU = torch.device("cpu")
# fake data, tiny networks, a measurement every 20 steps, a reference classifier of 30 steps
TINY = dict(dataset="fake", width=8, batch_size=32, teacher=0, validate_every=20, log_every=10, reference_steps=30)


def test_the_split_is_stratified_seeded_and_leaves_every_class_an_image() -> None:
    full = load_dataset("fake", Settings(), "train")
    counts = [1, 2, 5, 20, 64]  # uneven classes, one of a single image
    keep = torch.cat([torch.nonzero(full.labels == label).flatten()[:count] for label, count in enumerate(counts)])
    data = ImageData(full.images[keep], full.labels[keep], full.info)

    train, validation = split_validation(data, 0.5, seed=3)
    assert torch.bincount(validation.labels, minlength=5).tolist() == [0, 1, 3, 10, 32]  # half, rounded; never all
    assert torch.bincount(train.labels, minlength=5).tolist() == [1, 1, 2, 10, 32]
    again, _ = split_validation(data, 0.5, seed=3)
    other, _ = split_validation(data, 0.5, seed=4)
    assert torch.equal(again.images, train.images) and not torch.equal(other.images, train.images)
    rows = {tuple(image.flatten().tolist()) for image in data.images}
    assert len(rows) == len(data)  # every fake image differs, so the parts can be told apart by content
    assert {tuple(image.flatten().tolist()) for image in train.images}.isdisjoint(
        {tuple(image.flatten().tolist()) for image in validation.images})


@pytest.mark.parametrize(("metric", "values", "best_step"), [
    ("fid", [9.0, 7.0, 7.0, 8.0], 2),  # lower is better; a tie keeps the earlier point
    ("recall", [0.1, 0.3, 0.2, 0.3], 2),
    ("label_accuracy", [None, None, None, None], None),  # an unconditional model has none
])
def test_the_best_point_and_the_patience_count(metric: str, values: list[float | None], best_step: int | None) -> None:
    curve = [QualityPoint(step=step, fid=1.0, kid=0.0, precision=0.0, recall=0.0, label_accuracy=None) for step in (1, 2, 3, 4)]
    curve = [QualityPoint(**{**point.__dict__, metric: value}) for point, value in zip(curve, values, strict=True)]
    best = best_point(curve, metric)
    assert (best.step if best else None) == best_step
    assert measurements_since_best(curve, metric) == (4 - best_step if best_step else 0)
    assert better("kid", 0.1, 0.2) and not better("precision", 0.1, 0.2) and better("fid", 3.0, None)


@pytest.fixture(scope="module")
def curved(tmp_path_factory: pytest.TempPathFactory) -> tuple[FileStorage, list[TrainProgress]]:
    storage = FileStorage(tmp_path_factory.mktemp("curved"))
    reports: list[TrainProgress] = []
    run_training(TrainSpec(job_id="t-curve", steps=70, **TINY), ONE_THREAD, storage, TrainHooks(progress=reports.append))
    return storage, reports


def test_a_training_job_measures_its_curve_and_keeps_its_best_and_last_checkpoints(
        curved: tuple[FileStorage, list[TrainProgress]]) -> None:
    storage, reports = curved
    card = read_card(storage, "t-curve")
    assert [point["step"] for point in card.curve] == [20, 40, 60, 70]  # every 20 steps, and the last
    # 640 fake images, 64 of each class: 6 of each held out (a tenth, rounded)
    assert card.validation["images"] == 60 and card.num_train_images == 580
    assert card.validation["class_counts"] == {str(label): 6 for label in range(10)}
    assert card.validation["reference_saw_validation"] is True and "penultimate layer" in card.validation["feature_space"]
    best = best_point([QualityPoint.from_dict(point) for point in card.curve], "fid")
    assert best is not None and card.best == best.__dict__
    assert card.best_checkpoint == f"models/t-curve/best/a000000-step-{best.step:07d}.pt"
    assert storage.list("models/t-curve/best") == [card.best_checkpoint]  # older bests were dropped
    assert storage.list("models/t-curve/checkpoints") == [card.checkpoint]
    # the progress records carry the curve: the latest point and the best so far
    measured = {report.step: report for report in reports if report.quality is not None and report.quality.step == report.step}
    assert sorted(measured) == [20, 40, 60, 70]
    assert measured[70].best == best and measured[70].quality == QualityPoint.from_dict(card.curve[-1])
    assert "validation at step 70: FID " in measured[70].detail()
    assert json.loads(json.dumps(measured[70].__dict__, default=lambda point: point.__dict__))["quality"]["step"] == 70


def test_generate_and_evaluations_sample_the_best_checkpoint_unless_told_last(
        curved: tuple[FileStorage, list[TrainProgress]]) -> None:
    storage, _ = curved
    card = read_card(storage, "t-curve")
    best_state = checkpoint.from_bytes(storage.get_bytes(card.best_checkpoint or ""), "best")
    assert best_state["step"] == card.best["step"] and "opt_g" not in best_state  # the sampler alone
    best, _ = load_model(storage, "t-curve", CPU)
    last, _ = load_model(storage, "t-curve", CPU, "last")
    expected_best = checkpoint.generator_from_state(best_state).state_dict()
    expected_last = checkpoint.generator_from_state(checkpoint.load(storage, "t-curve") or {}).state_dict()
    assert all(torch.equal(best.state_dict()[name], expected_best[name]) for name in expected_best)
    assert all(torch.equal(last.state_dict()[name], expected_last[name]) for name in expected_last)
    if card.best["step"] != card.steps:
        assert not all(torch.equal(best.state_dict()[name], expected_last[name]) for name in expected_last)


def test_a_stopped_job_resumes_to_the_same_curve_and_the_same_best(
        curved: tuple[FileStorage, list[TrainProgress]], tmp_path: Path) -> None:
    uninterrupted = read_card(curved[0], "t-curve")
    storage = FileStorage(tmp_path)
    spec = TrainSpec(job_id="t-curve", steps=70, **TINY)
    steps: list[int] = []
    # preempted right after the second measurement's step, between two checkpoints (every 500 steps)
    first = TrainHooks(progress=lambda info: steps.append(info.step), stop_check_interval_s=0,
                       should_stop=lambda: StopReason.PREEMPTED if steps and steps[-1] >= 40 else None)
    with pytest.raises(JobStopped, match="stopped at step 40"):
        run_training(spec, ONE_THREAD, storage, first)
    run_training(spec, Settings(), storage, TrainHooks(attempt=Attempt(epoch=1)))
    resumed = read_card(storage, "t-curve")
    assert resumed.curve == uninterrupted.curve and resumed.best == uninterrupted.best
    best = checkpoint.from_bytes(storage.get_bytes(resumed.best_checkpoint or ""), "resumed")
    expected = checkpoint.from_bytes(curved[0].get_bytes(uninterrupted.best_checkpoint or ""), "uninterrupted")
    assert all(torch.equal(best["generator"][name], expected["generator"][name]) for name in expected["generator"])


def test_patience_stops_a_job_whose_metric_stopped_improving(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    # precision stays 0 for a tiny GAN this early: the first point is the best, and the next two do not improve on it
    spec = TrainSpec(job_id="t-patient", steps=500, select="precision", patience=2, **TINY)
    run_training(spec, Settings(), storage)
    card = read_card(storage, "t-patient")
    assert card.stopped_early and card.steps == 60 and [point["step"] for point in card.curve] == [20, 40, 60]
    assert card.best is not None and card.best["step"] == 20 and card.best["precision"] == 0.0
    assert checkpoint.load(storage, "t-patient")["step"] == 60  # type: ignore[index]


def test_a_job_with_too_few_images_to_hold_out_trains_on_all_and_says_why(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    run_training(TrainSpec(job_id="t-few", steps=3, per_class=2, **TINY), Settings(), storage)
    card = read_card(storage, "t-few")
    assert card.num_train_images == 20 and card.best_checkpoint is None and card.curve == []
    assert "holds out 0" in card.validation["why_none"] and card.sampling_checkpoint("best") == card.checkpoint


@pytest.mark.integration
@pytest.mark.parametrize(("option", "problem"), [
    # a choice is click's to check: its error line names the option and the choices, below its usage line
    (["--select", "sharpness"], "Invalid value for '--select': 'sharpness' is not one of 'fid', 'kid', 'precision', "
                                "'recall', 'label_accuracy'"),
    (["--patience", "0"], "patience: 0 is out of range"),
    (["--validation", "0.7"], "validation: 0.7 is out of range; use 0 to 0.5"),
    (["--validation", "0", "--patience", "3"], "patience: stopping early needs a validation curve"),
])
def test_a_bad_select_patience_or_split_is_refused_at_submit_with_nothing_enqueued(
        augment_env: dict[str, str], option: list[str], problem: str) -> None:
    queue = redis.Redis.from_url(augment_env["AUGMENT_BROKER_URL"])
    submitted = run_cli(augment_env, "train", "--dataset", "fake", *option)
    assert submitted.returncode != 0 and problem in submitted.stderr.strip().splitlines()[-1]
    assert "Traceback" not in submitted.stderr
    assert queue.dbsize() == 0  # nothing enqueued, no job record
