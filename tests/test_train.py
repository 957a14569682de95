"""Training behaviour that a user watches: progress reports, sample grids, loss curve, collapse guard; the resnet
architecture trained, resumed and sampled."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from producer.follow import status_line
from shared.lifecycle import JobStopped, StopReason
from shared.liveness import Attempt
from shared.models import read_card
from shared.progress import TrainProgress
from shared.settings import Settings
from shared.specs import (
    AUGMENTATIONS,
    AUTO_AUGMENTATIONS,
    AUTO_TEACHER_MEMBERS,
    SMALL_DATA_GUIDANCE,
    SMALL_DATA_MODE_SEEKING,
    SMALL_DATA_STEPS,
    TEACHER_STEPS,
    TrainSpec,
)
from shared.storage import FileStorage
from tests.support.threads import ONE_THREAD, TWO_THREADS
from worker import checkpoint
from worker.checkpoint import load_model
from worker.collapse_guard import collapse_warnings, diversity_warnings
from worker.diffaugment import POLICIES
from worker.gan_step import native_bf16, resolve_precision
from worker.resnet import ResNetGenerator
from worker.train import STAT_NAMES, TrainHooks, run_training


def test_run_training_reports_progress_and_writes_grids_curve_and_card(tmp_path):
    storage = FileStorage(tmp_path)
    reports: list[TrainProgress] = []
    # fake has 640 images: batch 64 gives 10 steps per epoch, so 25 steps cross two epoch boundaries (validation=0:
    # no images held out; test_validation.py has the curve)
    spec = TrainSpec(job_id="t-progress", dataset="fake", steps=25, width=8, batch_size=64, log_every=5, validation=0)
    result = run_training(spec, Settings(), storage, TrainHooks(progress=reports.append))

    assert [report.step for report in reports] == [5, 10, 15, 20, 25]
    for report in reports:
        assert all(isinstance(getattr(report, name), float) for name in STAT_NAMES)
        assert report.total_steps == 25 and report.images_per_s > 0
    assert reports[-1].epoch == 2 and reports[-1].eta_s == 0
    # one grid per epoch from fixed noise and labels, plus the last step
    assert storage.list("models/t-progress/samples") == [
        f"models/t-progress/samples/step-{step:07d}.png" for step in (10, 20, 25)
    ]
    grid = Image.open(io.BytesIO(storage.get_bytes("models/t-progress/samples/step-0000010.png")))
    assert grid.size == (8 * 30 + 2, 10 * 30 + 2)  # 8 columns x 10 class rows of 28 px with 2 px padding
    card = json.loads(storage.get_text("models/t-progress/model.json"))
    assert card["steps"] == 25 and card["class_names"][0] == "class0"
    assert card["loss_curve"] == "models/t-progress/attempts/a000000/losses.png"  # the attempt that finished
    curve = Image.open(io.BytesIO(storage.get_bytes(card["loss_curve"])))
    assert curve.width > 500
    assert result.warnings == card["warnings"]


def test_cancel_hook_stops_training_with_a_checkpoint(tmp_path):
    storage = FileStorage(tmp_path)
    # test_teacher: stopped with a teacher; validation=0: the GAN's loop is the job's first stage
    spec = TrainSpec(job_id="t-cancel", dataset="fake", steps=1000, width=8, batch_size=16, teacher=0, validation=0)
    hooks = TrainHooks(should_stop=lambda: StopReason.PREEMPTED, stop_check_interval_s=0.0)
    with pytest.raises(JobStopped, match=r"^job t-cancel stopped at step 1 \(preempted\)$") as stopped:
        run_training(spec, Settings(), storage, hooks)
    assert stopped.value.reason == StopReason.PREEMPTED
    assert storage.list("models/t-cancel/checkpoints") == ["models/t-cancel/checkpoints/a000000-step-0000001.pt"]
    assert not storage.exists("models/t-cancel/model.json")


def test_an_attempt_that_lost_its_lease_writes_no_checkpoint_and_no_card(tmp_path):
    storage = FileStorage(tmp_path)
    spec = TrainSpec(job_id="t-lost", dataset="fake", steps=1000, width=8, batch_size=16, teacher=0)
    hooks = TrainHooks(should_stop=lambda: StopReason.LEASE_LOST, stop_check_interval_s=0.0, attempt=Attempt(4))
    with pytest.raises(JobStopped) as stopped:
        run_training(spec, Settings(), storage, hooks)
    assert stopped.value.reason == StopReason.LEASE_LOST and storage.list("models/t-lost") == []


def test_a_finished_attempt_whose_commit_is_refused_leaves_the_card_alone(tmp_path):
    storage = FileStorage(tmp_path)
    spec = TrainSpec(job_id="t-late", dataset="fake", steps=2, width=8, batch_size=16, teacher=0)
    with pytest.raises(JobStopped, match="lease was taken over"):
        run_training(spec, Settings(), storage, TrainHooks(attempt=Attempt(1, commit=lambda card: None)))
    assert not storage.exists("models/t-late/model.json")
    result = run_training(spec, Settings(), storage, TrainHooks(attempt=Attempt(2)))
    card = json.loads(storage.get_text("models/t-late/model.json"))
    assert card["checkpoint"] == "models/t-late/checkpoints/a000002-step-0000002.pt" and result.steps == 2
    assert storage.list("models/t-late/checkpoints") == [card["checkpoint"]], "the card's checkpoint is the one kept"


def test_diversity_guard_flags_identical_samples_only():
    rng = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (16, 1, 28, 28), generator=rng, dtype=torch.uint8)
    labels = torch.arange(2).repeat_interleave(8)
    diverse = torch.randint(0, 256, (16, 1, 28, 28), generator=rng, dtype=torch.uint8)
    assert diversity_warnings(diverse, labels, real, labels, ["a", "b"]) == []
    collapsed = diverse.clone()
    collapsed[:8] = diverse[0]  # every sample of class "a" is the same image
    warnings = diversity_warnings(collapsed, labels, real, labels, ["a", "b"])
    assert len(warnings) == 1 and "class a" in warnings[0]


def test_collapse_guard_fires_when_d_rejects_every_sample():
    assert collapse_warnings(0.3) == []
    assert "collapsed to 0.001" in collapse_warnings(0.001)[0]


def test_watch_line_shows_the_vital_signs():
    status = {"state": "PROGRESS", "progress": {
        "kind": "train", "step": 50, "total_steps": 200, "epoch": 1, "loss_d": 1.2, "loss_g": 0.8, "d_x": 0.6, "d_g_z": 0.3,
        "images_per_s": 512.0, "eta_s": 75.0, "warnings": ["low diversity in class Bag"],
    }}
    line = status_line(status)
    for part in ("step 50/200", "epoch 1", "loss_D 1.200", "loss_G 0.800", "D(x) 0.600", "D(G(z)) 0.300",
                 "512 img/s", "ETA 1m15s", "WARNING: low diversity in class Bag"):
        assert part in line


def test_diffaugment_auto_is_on_for_small_training_sets_only():
    spec = TrainSpec(job_id="t-auto", dataset="fake")
    assert spec.diffaugment == "auto"
    assert spec.recipe(1_000, 10, 15).augmentations == ("translation", "cutout")
    assert spec.recipe(60_000, 10, 937).augmentations == ()
    assert TrainSpec(job_id="t-none", dataset="fake", diffaugment="none").recipe(100, 10, 1).augmentations == ()
    assert TrainSpec(job_id="t-some", dataset="fake", diffaugment="color").recipe(60_000, 10, 937).augmentations == ("color",)


def test_a_small_labelled_dataset_gets_the_small_data_recipe_and_a_large_one_the_plain_gan():
    spec = TrainSpec(job_id="t-auto", dataset="fake")
    small, large = spec.recipe(1_000, 10, 15), spec.recipe(60_000, 10, 937)
    assert (small.steps, small.mode_seeking, small.teacher, small.teacher_steps, small.guidance) == (
        SMALL_DATA_STEPS, SMALL_DATA_MODE_SEEKING, AUTO_TEACHER_MEMBERS, TEACHER_STEPS, SMALL_DATA_GUIDANCE)
    assert (large.steps, large.mode_seeking, large.teacher, large.guidance) == (937, 0.0, 0, 0.0)  # one epoch
    unlabelled = spec.recipe(1_000, 0, 15)
    assert (unlabelled.teacher, unlabelled.guidance) == (0, 0.0)  # nothing for a teacher to tell apart


def test_what_a_spec_gives_overrides_the_automatic_recipe():
    chosen = TrainSpec(job_id="t-own", dataset="fake", steps=40, mode_seeking=0.3, teacher=2, guidance=0.5)
    recipe = chosen.recipe(1_000, 10, 15)
    assert (recipe.steps, recipe.mode_seeking, recipe.teacher, recipe.guidance) == (40, 0.3, 2, 0.5)
    assert recipe.teacher_steps == 40  # a short job's teacher trains no longer than its GAN
    assert TrainSpec(job_id="t-own", dataset="fake", teacher=0).recipe(1_000, 10, 15).guidance == 0.0
    guided = TrainSpec(job_id="t-own", dataset="fake", guidance=1.0).recipe(60_000, 10, 937)
    assert (guided.teacher, guided.guidance) == (AUTO_TEACHER_MEMBERS, 1.0)  # guidance asked for brings its teacher
    assert TrainSpec(job_id="t-own", dataset="fake", epochs=2).recipe(1_000, 10, 15).steps == 30


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    auto = TrainSpec(job_id="t-auto", dataset="fake")
    cpu = torch.device("cpu")  # CUDA: test_a_gpu_without_bf16_trains_in_fp32
    for avx512_bf16, amx in [(False, False), (True, False), (False, True)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda value=avx512_bf16: value)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda value=amx: value)
        assert resolve_precision(auto, cpu) == ("bf16" if avx512_bf16 or amx else "fp32")
        for asked in ("fp32", "bf16"):
            assert resolve_precision(TrainSpec(job_id="t-asked", dataset="fake", precision=asked), cpu) == asked
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert resolve_precision(auto, cpu) == "fp32"  # a torch without the probes: the safe choice


def test_model_card_says_which_precision_trained(tmp_path):
    storage = FileStorage(tmp_path)
    spec = TrainSpec(job_id="t-bf16", dataset="fake", steps=2, width=8, batch_size=16, precision="bf16")
    run_training(spec, Settings(), storage)
    card = json.loads(storage.get_text("models/t-bf16/model.json"))
    assert card["precision"] == "bf16" and card["final"]["loss_d"] > 0


def test_a_class_balanced_schedule_gives_every_class_the_same_share_and_is_a_function_of_the_step():
    from worker.train import BatchSchedule

    labels = torch.tensor([0] * 40 + [1] * 8 + [2] * 2)  # a long tail: 40, 8 and 2 images
    schedule = BatchSchedule(50, 10, seed=3, device=torch.device("cpu"), labels=labels)
    epoch = torch.cat([schedule.indices(step) for step in range(schedule.steps_per_epoch)])
    shares = torch.bincount(labels[epoch], minlength=3).tolist()
    assert len(epoch) == 50 and max(shares) - min(shares) <= 1  # 17, 17, 16: the rare class's 2 images repeat
    again = BatchSchedule(50, 10, seed=3, device=torch.device("cpu"), labels=labels)
    assert torch.equal(again.indices(7), schedule.indices(7))  # resume-safe: the same batch for the same step
    plain = BatchSchedule(50, 10, seed=3, device=torch.device("cpu"))
    assert sorted(torch.cat([plain.indices(step) for step in range(5)]).tolist()) == list(range(50))


@pytest.mark.parametrize("has_bf16", [True, False])
def test_a_gpu_without_bf16_trains_in_fp32(monkeypatch, has_bf16):
    # a T4 or V100 reports CUDA but no bf16: autocasting to bf16 there would be emulated, or fail
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: has_bf16 and not including_emulation)
    assert native_bf16(torch.device("cuda")) is has_bf16
    assert resolve_precision(TrainSpec(job_id="t-gpu", dataset="fake"), torch.device("cuda")) == ("bf16" if has_bf16 else "fp32")


def test_every_augmentation_a_spec_accepts_is_one_the_trainer_has():
    # the spec (torch-free) names the policies, the trainer implements them: a name in one only would fail a job late
    assert set(AUGMENTATIONS) == set(POLICIES)
    assert set(AUTO_AUGMENTATIONS) <= set(POLICIES)


def test_a_resnet_job_resumes_to_the_same_weights_and_its_model_samples_as_a_resnet(tmp_path):
    tiny = dict(dataset="fake", arch="resnet", steps=30, width=8, batch_size=16, teacher=0, validate_every=10,
                reference_steps=30, checkpoint_every=10, log_every=5)
    whole = FileStorage(tmp_path / "whole")
    run_training(TrainSpec(job_id="t-resnet", **tiny), ONE_THREAD, whole, TrainHooks())
    stopped = FileStorage(tmp_path / "stopped")
    steps: list[int] = []
    first = TrainHooks(progress=lambda info: steps.append(info.step), stop_check_interval_s=0,
                       should_stop=lambda: StopReason.PREEMPTED if steps and steps[-1] >= 15 else None)
    with pytest.raises(JobStopped, match="stopped at step 15"):
        run_training(TrainSpec(job_id="t-resnet", **tiny), ONE_THREAD, stopped, first)
    run_training(TrainSpec(job_id="t-resnet", **tiny), Settings(), stopped, TrainHooks(attempt=Attempt(epoch=1)))

    card = read_card(stopped, "t-resnet")
    # what was trained, as the card says: the resnet pair always has a spectral-norm projection D
    assert card.config["arch"] == "resnet" and card.config["spectral_norm"] and card.config["conditioning"] == "projection"
    assert card.curve == read_card(whole, "t-resnet").curve
    resumed, uninterrupted = checkpoint.load(stopped, "t-resnet"), checkpoint.load(whole, "t-resnet")
    assert resumed is not None and uninterrupted is not None
    for network in ("generator", "discriminator"):  # BatchNorm statistics and spectral norm's vectors included
        for name, tensor in uninterrupted[network].items():
            assert torch.equal(resumed[network][name], tensor), (network, name)
    for which in ("best", "last"):
        generator, _ = load_model(stopped, "t-resnet", torch.device("cpu"), which)
        assert isinstance(generator, ResNetGenerator)
        images = generator(torch.randn(4, generator.config.nz), torch.arange(4))
        assert images.shape == (4, 1, 28, 28)


def test_a_continued_job_ends_where_one_run_uninterrupted_to_its_steps_ends(tmp_path):
    # a sweep's promoted trial: 20 steps, then continued to 40, is the 40-step run (a teacher and the curve included)
    tiny = dict(dataset="fake", width=8, batch_size=16, teacher=1, teacher_steps=5, validate_every=10,
                reference_steps=20, log_every=5)
    storage = FileStorage(tmp_path)
    run_training(TrainSpec(job_id="t-whole", steps=40, **tiny), ONE_THREAD, storage)
    run_training(TrainSpec(job_id="t-rung0", steps=20, **tiny), ONE_THREAD, storage)
    # on a worker that would choose another thread count: the continuation keeps the count its first part ran with
    result = run_training(TrainSpec(job_id="t-rung1", steps=40, continues="t-rung0", **tiny), TWO_THREADS, storage)

    whole, continued, first = (read_card(storage, job) for job in ("t-whole", "t-rung1", "t-rung0"))
    assert continued.threads == first.threads == 1
    assert result.steps == 40 and continued.curve == whole.curve and [p["step"] for p in continued.curve] == [10, 20, 30, 40]
    assert continued.teacher is not None and continued.teacher["key"] == first.teacher["key"]  # inherited, not retrained
    assert storage.list("models/t-rung1/teachers") == []
    # the best checkpoint may be the earlier job's: the card names it where it lies, and the earlier job keeps it
    assert continued.best_checkpoint is not None and storage.exists(continued.best_checkpoint)
    ends = [checkpoint.from_bytes(storage.get_bytes(card.checkpoint), card.checkpoint) for card in (whole, continued)]
    for network in ("generator", "discriminator"):
        for name, tensor in ends[0][network].items():
            assert torch.equal(ends[1][network][name], tensor), (network, name)


@pytest.mark.parametrize(("change", "problem"), [
    (dict(width=16), "its width differ from t-first's; a continuation changes only the steps"),
    (dict(steps=10), "t-first has trained 10 steps already; give more steps than that"),
])
def test_a_continuation_must_be_the_same_run_carried_on(tmp_path, change, problem):
    tiny = dict(dataset="fake", width=8, batch_size=16, teacher=0, validation=0, steps=10)
    storage = FileStorage(tmp_path)
    run_training(TrainSpec(job_id="t-first", **tiny), Settings(), storage)
    with pytest.raises(ValueError, match=f"^job t-next cannot continue t-first: {problem}$"):
        run_training(TrainSpec(job_id="t-next", continues="t-first", **{**tiny, "steps": 20, **change}), Settings(), storage)
    assert storage.list("models/t-next") == []


def test_a_continuation_whose_automatic_choices_would_differ_says_which_to_give(tmp_path):
    # validate_every is chosen from the steps: 50 at 60 steps, 100 at 2,000
    tiny = dict(dataset="fake", width=8, batch_size=16, teacher=0, teacher_steps=5, reference_steps=5, validation=0.1)
    storage = FileStorage(tmp_path)
    run_training(TrainSpec(job_id="t-short", steps=60, **tiny), Settings(), storage)
    with pytest.raises(ValueError, match="the automatic validate_every differ from t-short's; continue a job that was "
                                         "given --validate-every explicitly"):
        run_training(TrainSpec(job_id="t-long", steps=2000, continues="t-short", **tiny), Settings(), storage)
