"""The whole path on real parts: CLI processes -> real Redis -> real worker processes -> real S3 server."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import redis
import webdataset as wds
from PIL import Image

from shared.broker import QUEUES
from shared.manifest import Manifest
from shared.models import read_model_card
from shared.reader import SyntheticJob
from shared.settings import Settings
from shared.storage import S3Storage, open_storage
from tests.support.processes import run_cli

pytestmark = pytest.mark.integration


def storage_for(env: dict[str, str]) -> S3Storage:
    storage = open_storage(Settings.from_env(env))
    assert isinstance(storage, S3Storage)
    return storage


def test_train_generate_and_read_back_with_webdataset(augment_env, start_worker, tmp_path: Path):
    start_worker()
    submitted = run_cli(augment_env, "train", "--dataset", "fake", "--steps", "30", "--width", "8",
                        "--batch-size", "32", "--image-size", "32", "--teacher", "2", "--teacher-steps", "20")
    assert submitted.returncode == 0, submitted.stderr
    train_id = submitted.stdout.strip()
    assert train_id.startswith("t-") and "\n" not in train_id  # the id alone on stdout

    watched = run_cli(augment_env, "watch", train_id, "--interval", "0.2", timeout=180)
    assert watched.returncode == 0, watched.stderr
    storage = storage_for(augment_env)
    card = read_model_card(storage.get_text(f"models/{train_id}/model.json"), train_id)
    assert {card.checkpoint, card.grid, card.loss_curve} <= set(storage.list(f"models/{train_id}"))
    assert storage.list(f"models/{train_id}/checkpoints") == [card.checkpoint], "the finished job keeps its card's checkpoint"
    grid = Image.open(io.BytesIO(storage.get_bytes(card.grid)))
    assert grid.width > grid.height  # real images on the left, generated on the right

    submitted = run_cli(augment_env, "generate", "--model", train_id, "--count", "250", "--shard-size", "100",
                        "--seed", "5")
    assert submitted.returncode == 0, submitted.stderr
    generate_id = submitted.stdout.strip()
    watched = run_cli(augment_env, "watch", generate_id, "--interval", "0.2", timeout=180)
    assert watched.returncode == 0, watched.stderr

    manifest = Manifest.load(storage, generate_id)
    assert manifest.total == 250 and [shard.count for shard in manifest.shards] == [100, 100, 50]
    assert manifest.model_id == train_id and manifest.spec["seed"] == 5
    assert sum(manifest.class_counts.values()) == 250 and len(manifest.class_counts) == 10
    assert manifest.teacher is not None and manifest.teacher["members"] == 2
    assert manifest.teacher["key"] == card.teacher["key"] and storage.exists(manifest.teacher["key"])  # type: ignore[index]

    # A downstream pipeline reads the shards with the webdataset package itself, over presigned HTTP URLs.
    for shard in manifest.shards:
        data = storage.get_bytes(manifest.shard_key(shard))
        assert len(data) == shard.size and hashlib.sha256(data).hexdigest() == shard.sha256
    urls = SyntheticJob(generate_id, storage).shard_urls()
    assert all(url.startswith("http://") for url in urls)
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("png", "cls", "json", "__key__"))
    assert len(samples) == 250
    labels = Counter(int(label) for _, label, _, _ in samples)
    assert {str(label): count for label, count in labels.items()} == manifest.class_counts
    image, label, meta, key = samples[0]
    assert np.asarray(image).shape == (32, 32, 3) and "." not in key
    assert meta["class"] == int(label) and meta["model"] == train_id and meta["seed"] == 5
    for _, _, meta, _ in samples:  # the teacher's soft labels and the chosen target, rounded in the shard
        assert len(meta["probs"]) == 10 and abs(sum(meta["probs"]) - 1) < 2e-3 and min(meta["probs"]) >= 0
        assert meta["target"] == meta["probs"]  # the default rule: the teacher's view
    assert manifest.target_rule == "teacher"
    checked = list(SyntheticJob(generate_id, storage))  # the checked reader hands them over as targets summing to 1
    assert len(checked) == 250 and all(abs(float(sample.probs.sum()) - 1) < 1e-6 for sample in checked)  # type: ignore[union-attr]
    assert all(abs(float(sample.target.sum()) - 1) < 1e-6 for sample in checked)  # type: ignore[union-attr]
    confident = list(SyntheticJob(generate_id, storage, min_confidence=0.2))
    assert all(float(sample.probs[sample.label]) >= 0.2 - 1e-3 for sample in confident)  # type: ignore[index]

    status = run_cli(augment_env, "status", generate_id, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "SUCCESS"
    listing = run_cli(augment_env, "list")
    assert train_id in listing.stdout and generate_id in listing.stdout

    fetched = run_cli(augment_env, "fetch", generate_id, "--out", str(tmp_path / "out"))
    assert fetched.returncode == 0, fetched.stderr
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "manifest.json", "shard-000000-a1.tar", "shard-000001-a1.tar", "shard-000002-a1.tar",
    ]
    for output in (submitted, watched, status, listing, fetched):  # secrets never reach output
        assert augment_env["AUGMENT_S3_SECRET_KEY"] not in output.stdout + output.stderr


def queued_messages(env: dict[str, str]) -> int:
    client = redis.Redis.from_url(env["AUGMENT_BROKER_URL"])
    return sum(int(client.llen(queue)) for queue in QUEUES)  # type: ignore[arg-type]


def test_bad_spec_exits_2_with_one_line_and_enqueues_nothing(augment_env):
    result = run_cli(augment_env, "train", "--dataset", "fake", "--image-size", "48")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert "image_size" in result.stderr and "28, 32, 64" in result.stderr
    result = run_cli(augment_env, "train", "--dataset", "mnist-typo")
    assert result.returncode == 2 and "fashion-mnist" in result.stderr
    assert queued_messages(augment_env) == 0


def test_missing_dataset_and_unknown_model_fail_at_submit(augment_env):
    env = dict(augment_env, AUGMENT_DATA_DIR="/nonexistent/data")
    result = run_cli(env, "train", "--dataset", "cifar10")
    assert result.returncode == 2 and "/nonexistent/data" in result.stderr
    result = run_cli(augment_env, "generate", "--model", "t-000000000000", "--count", "10")
    assert result.returncode == 2 and "unknown model t-000000000000" in result.stderr
    assert queued_messages(augment_env) == 0


def test_unreachable_redis_and_s3_fail_fast(augment_env):
    dead_redis = dict(augment_env, AUGMENT_BROKER_URL="redis://:hunter2@127.0.0.1:1/0")
    started = time.monotonic()
    result = run_cli(dead_redis, "train", "--dataset", "fake", timeout=30)
    assert result.returncode == 1 and "unreachable" in result.stderr
    assert "hunter2" not in result.stderr
    assert time.monotonic() - started < 15

    dead_s3 = dict(augment_env, AUGMENT_S3_ENDPOINT="127.0.0.1:1")
    started = time.monotonic()
    result = run_cli(dead_s3, "generate", "--model", "t-000000000000", "--count", "10", timeout=60)
    assert result.returncode == 1 and "S3 at 127.0.0.1:1 is unreachable" in result.stderr
    assert time.monotonic() - started < 20


def test_cancel_queued_job_is_skipped_by_worker(augment_env, start_worker):
    submitted = run_cli(augment_env, "train", "--dataset", "fake", "--steps", "5", "--width", "8")
    job_id = submitted.stdout.strip()
    cancelled = run_cli(augment_env, "cancel", job_id)
    assert cancelled.returncode == 0 and "CANCELLED" in cancelled.stderr
    start_worker()
    watched = run_cli(augment_env, "watch", job_id, "--interval", "0.2", timeout=120)
    assert watched.returncode == 3
    assert storage_for(augment_env).list(f"models/{job_id}") == []


def test_long_tail_utility_evaluation_through_a_worker_and_its_report(augment_env, start_worker, tmp_path: Path):
    start_worker(queues="evaluate")
    submitted = run_cli(augment_env, "evaluate", "utility", "--dataset", "fake", "--per-class", "9", "--imbalance", "3",
                        "--seeds", "2",
                        "--gan-steps", "4", "--gan-width", "8", "--classifier-steps", "10", "--reference-steps", "10",
                        "--samples-per-class", "10", "--test-limit", "50", "--sweep", "--ratios", "1",
                        "--synthetic-weights", "0.5", "--min-confidences", "0.5")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.startswith("e-")
    watched = run_cli(augment_env, "watch", job_id, "--interval", "0.3", timeout=300)
    assert watched.returncode == 0, watched.stderr
    printed = run_cli(augment_env, "report", job_id)
    assert printed.returncode == 0, printed.stderr
    for arm in ("real", "real, class-balanced loss weights", "real + mixup, teacher labels (no GAN)",
                "real + GAN, hard labels", "real + GAN, teacher labels", "real + GAN, label where the teacher agrees, else teacher",
                "real + GAN drawn as the real classes, teacher labels", "ceiling: real held-out images, teacher labels",
                "ceiling: real held-out images, true labels", "(a) real"):
        assert f"| {arm} |" in printed.stdout
    assert "The GAN's own share" in printed.stdout and "Sweep: (c) - (a)" in printed.stdout
    assert "The rarest third's accuracy" in printed.stdout and "The true-label ceiling adds" in printed.stdout
    report = json.loads(storage_for(augment_env).get_text(f"reports/{job_id}/report.json"))
    # 9 images of the commonest class down to 3 of the rarest, as the GAN's model card records too
    assert sorted(report["class_counts"]) == [3, 3, 4, 4, 5, 6, 6, 7, 8, 9] and report["imbalance"] == 3
    card = json.loads(storage_for(augment_env).get_text(f"models/{report['gan']}/model.json"))
    assert sorted(card["class_counts"].values()) == sorted(report["class_counts"])
    assert sorted(report["class_counts"][label] for label in report["rarest_third"]) == [3, 3, 4]
    fetched = run_cli(augment_env, "fetch", job_id, "--out", str(tmp_path / "report"))
    assert fetched.returncode == 0, fetched.stderr
    assert {"accuracy.png", "grid.png", "report.md", "report.json"} <= {path.name for path in (tmp_path / "report").iterdir()}


def test_evaluations_refuse_bad_input_at_submit(augment_env):
    result = run_cli(augment_env, "evaluate", "quality", "--model", "t-000000000000")
    assert result.returncode == 2 and "unknown model t-000000000000" in result.stderr
    result = run_cli(augment_env, "evaluate", "utility", "--dataset", "fake", "--ratios", "two")
    assert result.returncode == 2 and "ratios" in result.stderr and result.stderr.count("\n") == 1
    result = run_cli(augment_env, "evaluate", "utility", "--model", "t-000000000000", "--per-class", "5")
    assert result.returncode == 2 and "per_class: a utility study of --model uses that model's own" in result.stderr
    result = run_cli(augment_env, "evaluate", "utility")
    assert result.returncode == 2 and "needs a dataset (to train a GAN on a subset of) or a model" in result.stderr
    result = run_cli(augment_env, "report", "e-000000000000")
    assert result.returncode == 2 and "has no report" in result.stderr
    assert queued_messages(augment_env) == 0


def test_rebalance_brings_every_class_of_an_imbalanced_set_to_its_largest(augment_env, start_worker, tmp_path: Path):
    for name, count in (("common", 12), ("middling", 5), ("rare", 2)):
        for index in range(count):
            (tmp_path / "shapes" / name).mkdir(parents=True, exist_ok=True)
            Image.new("L", (28, 28), 20 * len(name) + index).save(tmp_path / "shapes" / name / f"{index}.png")
    start_worker()
    trained = run_cli(augment_env, "train", "--dataset", f"imagefolder:{tmp_path / 'shapes'}", "--image-size", "32",
                      "--channels", "1", "--steps", "2", "--width", "8", "--batch-size", "8", "--teacher", "0")
    assert trained.returncode == 0, trained.stderr
    model = trained.stdout.strip()
    assert run_cli(augment_env, "watch", model, "--interval", "0.2", timeout=180).returncode == 0
    storage = storage_for(augment_env)
    card = json.loads(storage.get_text(f"models/{model}/model.json"))
    # the training split's counts (every tenth file of a class is the test split), in the card's class order
    assert card["class_counts"] == {"0": 11, "1": 5, "2": 2}

    submitted = run_cli(augment_env, "generate", "--model", model, "--rebalance", "--shard-size", "4")
    assert submitted.returncode == 0, submitted.stderr
    assert run_cli(augment_env, "watch", submitted.stdout.strip(), "--interval", "0.2", timeout=180).returncode == 0
    manifest = Manifest.load(storage, submitted.stdout.strip())
    assert manifest.class_counts == {"1": 6, "2": 9}  # the largest class gets none
    assert manifest.total == 15 and manifest.spec["rebalance_to"] == 11
    assert manifest.spec["real_counts"] == card["class_counts"]  # the plan, recorded with what it started from

    to_twenty = run_cli(augment_env, "generate", "--model", model, "--rebalance", "--to", "20")
    assert to_twenty.returncode == 0, to_twenty.stderr
    assert run_cli(augment_env, "watch", to_twenty.stdout.strip(), "--interval", "0.2", timeout=180).returncode == 0
    assert Manifest.load(storage, to_twenty.stdout.strip()).class_counts == {"0": 9, "1": 15, "2": 18}

    nothing = run_cli(augment_env, "generate", "--model", model, "--rebalance", "--to", "2")
    assert nothing.returncode == 2 and "nothing to generate; give --to above 2" in nothing.stderr
    both = run_cli(augment_env, "generate", "--model", model, "--rebalance", "--count", "5")
    assert both.returncode == 2 and "leave out --count" in both.stderr and both.stderr.count("\n") == 1
