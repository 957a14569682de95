"""The fair baseline's augmentation, soft targets, the teacher, and teacher-labelled shards read back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from shared.lifecycle import JobStopped, StopReason
from shared.manifest import Manifest
from shared.progress import StageProgress, progress_line
from shared.reader import SyntheticJob, teacher_confidence
from shared.records import MemoryJobStore
from shared.settings import Settings
from shared.specs import GenerateSpec, TrainSpec
from shared.storage import FileStorage
from worker.classifier import classic_augment, soft_cross_entropy
from worker.data import load_dataset
from worker.generate import GeneratorCache, finalize_job, plan_job, run_shard
from worker.mixing import MixedDataset
from worker.teacher import find_teacher, load_teacher
from worker.train import TrainHooks, run_training


def test_classic_augmentation_draws_a_crop_and_a_flip_for_every_sample() -> None:
    images = torch.linspace(-1, 1, 28 * 28).reshape(1, 1, 28, 28).expand(256, 1, 28, 28)
    augmented = classic_augment(images, torch.Generator().manual_seed(0))
    assert augmented.shape == images.shape
    distinct = {tuple(image.flatten()[::37].tolist()) for image in augmented}
    assert len(distinct) > 20  # 25 offsets x 2 flips, drawn per sample; one draw per batch would give 1
    # every output is the input shifted by at most 2 pixels (black where it moved in), maybe mirrored
    for image in augmented[:16]:
        inside = image[0, 2:-2, 2:-2]
        assert any(torch.equal(inside, candidate[0, 2 + dy : 26 + dy, 2 + dx : 26 + dx])
                   for candidate in (images[0], images[0].flip(-1)) for dy in range(-2, 3) for dx in range(-2, 3))


def test_soft_cross_entropy_is_cross_entropy_for_one_hot_targets_and_lowest_at_the_targets() -> None:
    logits = torch.randn(8, 5)
    labels = torch.arange(8) % 5
    assert torch.allclose(soft_cross_entropy(logits, F.one_hot(labels, 5).float()), F.cross_entropy(logits, labels, reduction="none"))
    targets = torch.softmax(torch.randn(8, 5), dim=1)
    at_targets = soft_cross_entropy(targets.log(), targets)
    assert (soft_cross_entropy(logits, targets) >= at_targets - 1e-6).all()  # Gibbs: KL >= 0


@pytest.fixture(scope="module")
def teacher_stages() -> list[StageProgress]:
    """What the taught model's job reported while its teacher trained."""
    return []


@pytest.fixture(scope="module")
def taught_model(tmp_path_factory: pytest.TempPathFactory, teacher_stages: list[StageProgress]) -> Path:
    root = tmp_path_factory.mktemp("taught")
    spec = TrainSpec(job_id="t-taught", dataset="fake", steps=3, width=8, batch_size=16, teacher=2, teacher_steps=60,
                     teacher_width=8)
    run_training(spec, Settings(), FileStorage(root), TrainHooks(stage=teacher_stages.append))
    return root


def test_a_training_job_reports_its_teachers_steps_rate_and_eta(taught_model: Path, teacher_stages: list[StageProgress]) -> None:
    # the reference classifier of its validation curve first, then the teacher
    assert [stage.stage for stage in teacher_stages][0] == "training the reference classifier"
    teacher = [stage for stage in teacher_stages if stage.stage == "training the teacher (2 classifiers)"]
    assert teacher, "the teacher's stage reported nothing"
    assert {stage.total for stage in teacher} == {120}  # both members' steps, one bar
    done = [stage.done for stage in teacher]
    assert done == sorted(done) and done[0] >= 1 and done[-1] == 120
    assert all(stage.per_s > 0 for stage in teacher) and teacher[-1].eta_s == 0
    line = progress_line("PROGRESS", teacher[-1])
    assert "[########################]" in line and "120/120 steps" in line and "steps/s ETA 0m00s" in line


def test_a_training_job_stores_its_teacher_and_names_it_in_the_model_card(taught_model: Path) -> None:
    storage = FileStorage(taught_model)
    card = json.loads(storage.get_text("models/t-taught/model.json"))
    assert card["teacher"]["members"] == 2 and card["teacher"]["key"] == "models/t-taught/teachers/a000000.pt"
    teacher = load_teacher(storage, card["teacher"]["key"])
    assert len(teacher.members) == 2
    test = load_dataset("fake", Settings(), "test")
    probs = teacher.probs(test.images)
    assert probs.shape == (len(test), 10) and torch.allclose(probs.sum(1), torch.ones(len(test)))
    assert (probs.argmax(1) == test.labels).float().mean() > 0.5  # it learned the classes it labels
    assert find_teacher(storage, "t-untaught") is None


def test_generated_shards_carry_the_teachers_probabilities(taught_model: Path, tmp_path: Path) -> None:
    shutil.copytree(taught_model, tmp_path / "store")
    storage = FileStorage(tmp_path / "store")
    spec = GenerateSpec(job_id="g-taught", model="t-taught", count=30, shard_size=12, batch_size=8)
    store, dispatched = MemoryJobStore(), []
    plan_job(spec, store, dispatched.append)
    for index in dispatched:
        run_shard(spec, index, storage, store, GeneratorCache(), torch.device("cpu"), "worker/1")
    finalize_job(spec, storage, store, dispatched.append)

    manifest = Manifest.load(storage, "g-taught")
    assert manifest.teacher is not None and manifest.teacher["members"] == 2 and manifest.format == 2
    samples = list(SyntheticJob("g-taught", storage))
    assert len(samples) == 30
    for sample in samples:
        assert len(sample.meta["probs"]) == 10 and abs(sum(sample.meta["probs"]) - 1) < 1e-3  # rounded in the shard
        assert sample.probs is not None and abs(float(sample.probs.sum()) - 1) < 1e-6
    confident = list(SyntheticJob("g-taught", storage, min_confidence=0.5))
    assert all(float(sample.probs[sample.label]) >= 0.5 - 1e-4 for sample in confident)  # type: ignore[index]
    assert len(confident) == sum(float(s.probs[s.label]) >= 0.5 for s in samples)  # type: ignore[index]
    # a threshold that about half the samples pass: the mix must still deliver the ratio's share of synthetic samples
    # the shard's own figures (float64), as the filter reads them: a float32 copy may fall either side of a tie
    median = sorted(teacher_confidence(s.label, s.meta) for s in samples)[len(samples) // 2]
    filtered = SyntheticJob("g-taught", storage, min_confidence=median)
    passing = sum(teacher_confidence(s.label, s.meta) >= median for s in samples)
    assert len(filtered) == passing and 0 < passing < 30
    few = load_dataset("fake", Settings(), "train", limit=passing // 2)
    mixed_confident = list(MixedDataset(few.images, few.labels, [filtered], ratio=passing / len(few)))
    assert sum(sample.synthetic for sample in mixed_confident) == passing, "the ratio's share, not fewer"

    real = load_dataset("fake", Settings(), "train", limit=20)
    mixed = list(MixedDataset(real.images, real.labels, [SyntheticJob("g-taught", storage)], ratio=1.0))
    for sample in mixed:
        assert sample.target.shape == (10,) and abs(float(sample.target.sum()) - 1) < 1e-6
        if not sample.synthetic:
            assert int(sample.target.argmax()) == sample.label and float(sample.target.max()) == 1.0
    assert any(sample.synthetic and float(sample.target.max()) < 1.0 for sample in mixed)  # soft, not one-hot

    # the README's training loop, batched by PyTorch's default collate
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(real.images[0].numel(), 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dataset = MixedDataset(real.images, real.labels, [SyntheticJob("g-taught", storage)], ratio=1.0)
    for batch in DataLoader(dataset, batch_size=16):
        log_probs = F.log_softmax(model(batch.image.float() / 255), dim=1)
        real_rows = ~batch.synthetic
        loss = F.nll_loss(log_probs[real_rows], batch.label[real_rows])
        if batch.synthetic.any():
            loss = loss + F.kl_div(log_probs[batch.synthetic], batch.target[batch.synthetic], reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)


@pytest.mark.parametrize("rule", ["hard", "teacher", "agree"])
def test_each_samples_target_follows_the_jobs_rule(taught_model: Path, tmp_path: Path, rule: str) -> None:
    shutil.copytree(taught_model, tmp_path / "store")
    storage = FileStorage(tmp_path / "store")
    spec = GenerateSpec(job_id="g-ruled", model="t-taught", count=20, shard_size=20, targets=rule)  # type: ignore[arg-type]
    store, dispatched = MemoryJobStore(), []
    plan_job(spec, store, dispatched.append)
    run_shard(spec, 0, storage, store, GeneratorCache(), torch.device("cpu"), "worker/1")
    finalize_job(spec, storage, store, dispatched.append)
    assert Manifest.load(storage, "g-ruled").target_rule == rule
    for sample in SyntheticJob("g-ruled", storage):
        assert sample.probs is not None and sample.target is not None
        one_hot = [float(k == sample.label) for k in range(10)]
        agrees = int(sample.probs.argmax()) == sample.label
        expected = {"hard": one_hot, "teacher": sample.probs.tolist(), "agree": one_hot if agrees else sample.probs.tolist()}
        assert sample.target.tolist() == pytest.approx(expected[rule], abs=1e-6)


def test_filtering_by_confidence_needs_a_teacher(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    run_training(TrainSpec(job_id="t-plain", dataset="fake", steps=1, width=8, batch_size=16, teacher=0), Settings(), storage)
    spec = GenerateSpec(job_id="g-plain", model="t-plain", count=4, shard_size=4)
    store, dispatched = MemoryJobStore(), []
    plan_job(spec, store, dispatched.append)
    run_shard(spec, 0, storage, store, GeneratorCache(), torch.device("cpu"), "worker/1")
    finalize_job(spec, storage, store, dispatched.append)
    assert Manifest.load(storage, "g-plain").teacher is None
    assert all(sample.probs is None for sample in SyntheticJob("g-plain", storage))
    with pytest.raises(ValueError, match="no teacher probabilities to filter by"):
        SyntheticJob("g-plain", storage, min_confidence=0.5)
    with pytest.raises(TypeError, match=r"the job id comes first, as in SyntheticJob.open\(job_id\)"):
        SyntheticJob(storage, "g-plain")  # type: ignore[arg-type]  # the order before it matched open's


def test_the_teacher_guides_a_generator_towards_the_class_it_was_asked_for(taught_model: Path) -> None:
    teacher = find_teacher(FileStorage(taught_model), "t-taught")[0]  # type: ignore[index]
    assert teacher is not None
    guide = teacher.frozen(torch.device("cpu"))
    real = load_dataset("fake", Settings(), "train", limit=64)
    images = (real.images.float() / 127.5 - 1).requires_grad_(True)  # (N, C, H, W) in [-1, 1], as G makes them
    right, wrong = guide.guidance_loss(images, real.labels), guide.guidance_loss(images, (real.labels + 1) % real.info.num_classes)
    assert right < wrong  # the teacher learned the fake dataset: true labels cost less than swapped ones
    right.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0  # G gets a gradient through the teacher
    assert all(not p.requires_grad for member in guide.members for p in member.parameters())  # the teacher stays fixed


def test_guided_training_trains_its_teacher_first_and_leaves_it_stored(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    spec = TrainSpec(job_id="t-guided", dataset="fake", steps=4, width=8, batch_size=16, teacher=1, teacher_steps=20,
                     teacher_width=8, guidance=1.0, mode_seeking=1.0)
    result = run_training(spec, Settings(), storage)
    assert result.steps == 4
    teacher = find_teacher(storage, "t-guided")[0]  # type: ignore[index]
    assert teacher is not None and teacher.meta["members"] == 1


def test_the_teacher_works_at_most_at_32px_unless_told_and_never_above_the_images_size() -> None:
    spec = TrainSpec(job_id="t-sizes", dataset="fake")
    assert (spec.teacher_image_size(28), spec.teacher_image_size(32), spec.teacher_image_size(64)) == (28, 32, 32)
    told = TrainSpec(job_id="t-sizes", dataset="fake", teacher_size=48)
    assert (told.teacher_image_size(32), told.teacher_image_size(64)) == (32, 48)


def test_a_64px_job_trains_labels_and_guides_with_a_32px_teacher_and_shares_it_only_at_that_size(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    tiny: dict[str, Any] = dict(dataset="fake", image_size=64, steps=2, width=8, batch_size=16, teacher=1,
                                teacher_steps=20, teacher_width=8, guidance=1.0, validation=0)
    run_training(TrainSpec(job_id="t-big", **tiny), Settings(), storage)  # its GAN steps are guided by the teacher
    card = json.loads(storage.get_text("models/t-big/model.json"))
    teacher = load_teacher(storage, card["teacher"]["key"])
    assert card["teacher"]["image_size"] == teacher.members[0].config.image_size == 32
    images = load_dataset("fake", Settings(), "test", image_size=64).images[:8]
    assert teacher.probs(images).shape == (8, 10)  # it labels the job's 64 px samples
    # a job that asks for a teacher at another size trains its own rather than taking the one it was pointed at
    run_training(TrainSpec(job_id="t-small", teacher_size=16, teacher_from="t-big", **tiny), Settings(), storage)
    small = json.loads(storage.get_text("models/t-small/model.json"))["teacher"]
    assert small["image_size"] == 16 and small["key"].startswith("models/t-small/")
    run_training(TrainSpec(job_id="t-same", teacher_from="t-big", **tiny), Settings(), storage)
    assert json.loads(storage.get_text("models/t-same/model.json"))["teacher"]["key"] == card["teacher"]["key"]


def test_a_job_cancelled_while_its_teacher_trains_stops_there(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    # validation=0: the teacher is the job's first stage
    spec = TrainSpec(job_id="t-cancel", dataset="fake", steps=100_000, width=8, batch_size=16, teacher_width=8,
                     validation=0)
    asked: list[bool] = []

    def stop_on_second_question() -> StopReason | None:
        asked.append(True)
        return StopReason.CANCELLED if len(asked) >= 2 else None

    with pytest.raises(JobStopped, match=r"while training the teacher \(\d classifiers\) \(cancelled\)"):
        run_training(spec, Settings(), storage, TrainHooks(should_stop=stop_on_second_question, stop_check_interval_s=0))
    assert len(asked) == 2 and find_teacher(storage, "t-cancel") is None  # nothing half-trained is stored
