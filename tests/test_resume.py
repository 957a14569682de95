"""Exact resume, the accelerate way: train K steps, interrupt at K/2, resume, compare with an uninterrupted run."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import torch

from shared.progress import TrainProgress
from shared.settings import Settings
from shared.specs import TrainSpec
from shared.storage import FileStorage, open_storage
from tests.processes import run_cli
from worker import checkpoint
from worker.train import TrainHooks, run_training

TENSOR_GROUPS = ("generator", "generator_ema", "discriminator")


def assert_same_training_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["step"] == b["step"]
    for group in TENSOR_GROUPS:
        assert a[group].keys() == b[group].keys()
        for name in a[group]:
            assert torch.equal(a[group][name], b[group][name]), f"{group}.{name} differs"
    for optimizer in ("opt_g", "opt_d"):
        for index, slot in a[optimizer]["state"].items():
            for name, value in slot.items():
                assert torch.equal(value, b[optimizer]["state"][index][name]), f"{optimizer}[{index}].{name} differs"
    assert torch.equal(a["rng"]["noise"], b["rng"]["noise"])


class Crash(Exception):
    pass


def spec_for(job_id: str, **overrides: Any) -> TrainSpec:
    fields = dict(job_id=job_id, dataset="fake", steps=40, width=8, batch_size=16, log_every=5,
                  checkpoint_every=10, seed=11, diffaugment="translation,cutout,color", ema=0.999)
    return TrainSpec(**{**fields, **overrides})


def test_resume_in_process_equals_uninterrupted(tmp_path):
    storage = FileStorage(tmp_path)
    settings = Settings()
    run_training(spec_for("t-whole"), settings, storage)

    def crash_at_half(info: TrainProgress) -> None:
        if info.step >= 25:
            raise Crash()

    with pytest.raises(Crash):
        run_training(spec_for("t-split"), settings, storage, TrainHooks(progress=crash_at_half))
    interrupted = checkpoint.load(storage, "t-split")
    assert interrupted is not None and interrupted["step"] == 20  # the latest checkpoint is the step-20 one
    run_training(spec_for("t-split"), settings, storage)

    whole, split = checkpoint.load(storage, "t-whole"), checkpoint.load(storage, "t-split")
    assert whole is not None and split is not None
    assert_same_training_state(whole, split)


def test_resume_refuses_a_checkpoint_from_another_spec(tmp_path):
    storage = FileStorage(tmp_path)
    run_training(spec_for("t-same", steps=10), Settings(), storage)
    with pytest.raises(ValueError, match="different spec"):
        run_training(spec_for("t-same", steps=20), Settings(), storage)


def wait_for_step(env: dict[str, str], job_id: str, step: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = json.loads(run_cli(env, "status", job_id, "--json").stdout)
        if (status.get("progress") or {}).get("step", 0) >= step:
            return
        assert status["state"] not in {"SUCCESS", "FAILURE"}, status
        time.sleep(0.2)
    raise AssertionError(f"{job_id} never reached step {step}")


@pytest.mark.integration
def test_worker_killed_mid_training_resumes_exactly(augment_env, start_worker):
    # Redis redelivers the unacknowledged task of a dead worker once the visibility timeout has passed.
    env = dict(augment_env, AUGMENT_VISIBILITY_TIMEOUT="3")
    args = ["train", "--dataset", "fake", "--steps", "600", "--width", "16", "--batch-size", "32",
            "--checkpoint-every", "50", "--seed", "5", "--ema", "0.999"]
    first = start_worker(env=env)
    job_id = run_cli(env, *args).stdout.strip()
    wait_for_step(env, job_id, 200)
    first.kill()
    storage = open_storage(Settings.from_env(env))
    killed_at = checkpoint.from_bytes(storage.get_bytes(f"models/{job_id}/checkpoint.pt"), "checkpoint")["step"]
    assert 0 < killed_at < 600 and not storage.exists(f"models/{job_id}/model.json")

    second = start_worker(env=env)
    watched = run_cli(env, "watch", job_id, "--interval", "0.3", timeout=240)
    assert watched.returncode == 0, watched.stderr + second.log_tail()
    assert f"resuming from step {killed_at}" in second.log_path.read_text()

    reference_id = run_cli(env, *args).stdout.strip()
    assert run_cli(env, "watch", reference_id, "--interval", "0.3", timeout=240).returncode == 0
    resumed = checkpoint.from_bytes(storage.get_bytes(f"models/{job_id}/checkpoint.pt"), "resumed")
    reference = checkpoint.from_bytes(storage.get_bytes(f"models/{reference_id}/checkpoint.pt"), "reference")
    assert_same_training_state(resumed, reference)
