"""worker.generate: which label each generated image gets, per-shard seeds, and rendering one shard."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.shards import read_shard, sample_key
from shared.specs import GenerateSpec, SpecError
from worker.generate import LoadedModel, labels_for_range, labels_plan, render_shard, shard_seed
from worker.model import DCGANGenerator as Generator
from worker.model import GANConfig


def spec(count: int, **changes: object) -> GenerateSpec:
    return GenerateSpec.from_dict({"job_id": "g-0123456789ab", "model": "t-0123456789ab", "count": count, **changes})


def split_points(total: int, step: int) -> list[tuple[int, int]]:
    return [(start, min(total, start + step)) for start in range(0, total, step)]


# ---- labels_plan: how many images of each class ----


@pytest.mark.parametrize(
    ("count", "classes", "plan"),
    [
        (10, 3, [4, 3, 3]),
        (11, 3, [4, 4, 3]),
        (12, 3, [4, 4, 4]),
        (2, 3, [1, 1, 0]),
        (1, 10, [1] + [0] * 9),
        (100, 10, [10] * 10),
        (7, 1, [7]),
        (7, 0, [7]),
    ],
)
def test_labels_plan_balanced(count: int, classes: int, plan: list[int]) -> None:
    job = spec(count)
    assert labels_plan(job, classes) == plan
    assert sum(plan) == count


def test_labels_plan_per_class() -> None:
    job = spec(10, class_counts={"0": 3, "2": 7})
    assert labels_plan(job, 3) == [3, 0, 7]
    assert labels_plan(job, 5) == [3, 0, 7, 0, 0]


def test_labels_plan_class_beyond_model() -> None:
    job = spec(10, class_counts={"0": 3, "10": 7})
    with pytest.raises(SpecError) as info:
        labels_plan(job, 10)
    assert info.value.field == "class_counts"
    assert "0-9" in str(info.value) and "\n" not in str(info.value)


# ---- balanced plans ----


@pytest.mark.parametrize("classes", [1, 2, 3, 10])
@pytest.mark.parametrize("count", [1, 2, 7, 10, 99, 1000, 1003])
def test_balanced_is_round_robin(count: int, classes: int) -> None:
    plan = labels_plan(spec(count), classes)
    labels = labels_for_range(plan, 0, count)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.arange(count) % classes)
    assert np.bincount(labels, minlength=classes).tolist() == plan
    for start, stop in split_points(count, 7):
        np.testing.assert_array_equal(labels_for_range(plan, start, stop), labels[start:stop])


def test_balanced_ranges_are_computed_directly() -> None:
    """Round robin needs no full sequence: a range deep inside a huge job is cheap and exact."""
    plan = labels_plan(spec(100_000_000), 10)
    np.testing.assert_array_equal(labels_for_range(plan, 99_999_990, 100_000_000), np.arange(10))


def test_custom_plan_equal_to_balanced_is_round_robin() -> None:
    custom = spec(10, class_counts={"0": 4, "1": 3, "2": 3})
    assert labels_plan(custom, 3) == labels_plan(spec(10), 3)
    np.testing.assert_array_equal(labels_for_range(labels_plan(custom, 3), 0, 10), np.arange(10) % 3)


# ---- custom plans ----

CUSTOM_PLANS = [
    [500, 10, 0, 37, 1453],
    [1, 10, 100, 1000],
    [3000, 10],
    [10, 3000],
    [0, 0, 250, 0],
    [700, 300],
    [123, 456, 789, 10, 11, 12, 99, 1000, 0, 50],
]


@pytest.mark.parametrize("plan", CUSTOM_PLANS, ids=str)
def test_custom_plan_counts(plan: list[int]) -> None:
    total = sum(plan)
    labels = labels_for_range(plan, 0, total)
    assert labels.dtype == np.int64
    assert len(labels) == total
    assert np.bincount(labels, minlength=len(plan)).tolist() == plan
    assert labels_for_range(plan, 0, total).tolist() == labels.tolist()  # a pure function


@pytest.mark.parametrize("plan", CUSTOM_PLANS, ids=str)
def test_custom_plan_spreads_classes(plan: list[int]) -> None:
    total = sum(plan)
    labels = labels_for_range(plan, 0, total)
    for tenth in range(10):
        window = set(labels[tenth * total // 10 : (tenth + 1) * total // 10].tolist())
        for label, number in enumerate(plan):
            if number >= 10:
                assert label in window, (tenth, label)
            if number == 0:
                assert label not in window


@pytest.mark.parametrize("plan", CUSTOM_PLANS, ids=str)
@pytest.mark.parametrize("step", [1, 7, 100, 333, 10_000])
def test_custom_plan_sub_ranges_concatenate(plan: list[int], step: int) -> None:
    total = sum(plan)
    full = labels_for_range(plan, 0, total)
    pieces = [labels_for_range(plan, start, stop) for start, stop in split_points(total, step)]
    np.testing.assert_array_equal(np.concatenate(pieces), full)


def test_custom_plan_from_spec() -> None:
    generate = spec(1000, class_counts={"0": 100, "3": 900})
    plan = labels_plan(generate, 5)
    assert plan == [100, 0, 0, 900, 0]
    labels = labels_for_range(plan, 0, 1000)
    assert set(labels.tolist()) == {0, 3}
    assert np.bincount(labels, minlength=5).tolist() == plan


def test_empty_range() -> None:
    assert labels_for_range([5, 5], 3, 3).tolist() == []
    assert labels_for_range([9, 1], 3, 3).tolist() == []


@settings(max_examples=200, deadline=None)
@given(
    plan=st.lists(st.integers(0, 60), min_size=1, max_size=12).filter(lambda p: sum(p) > 0),
    cuts=st.lists(st.integers(0, 720), max_size=6),
)
def test_any_plan_counts_and_concatenation(plan: list[int], cuts: list[int]) -> None:
    total = sum(plan)
    full = labels_for_range(plan, 0, total)
    assert len(full) == total
    assert np.bincount(full, minlength=len(plan)).tolist() == plan
    bounds = sorted({0, total, *(cut % (total + 1) for cut in cuts)})
    pieces = [labels_for_range(plan, start, stop) for start, stop in zip(bounds, bounds[1:], strict=False)]
    np.testing.assert_array_equal(np.concatenate(pieces) if pieces else np.array([], dtype=np.int64), full)


# ---- seeds ----


@pytest.mark.parametrize("job_seed", [0, 1, 42, 2**31 - 1])
def test_shard_seed_differs_per_shard(job_seed: int) -> None:
    seeds = [shard_seed(job_seed, index) for index in range(10_000)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= seed < 2**63 - 1 for seed in seeds)
    torch.Generator().manual_seed(seeds[-1])  # usable as a torch seed


def test_shard_seed_depends_on_job_seed() -> None:
    assert shard_seed(0, 0) != shard_seed(1, 0)
    assert shard_seed(7, 3) == shard_seed(7, 3)
    assert len({shard_seed(seed, 5) for seed in range(1000)}) == 1000


def test_shard_count() -> None:
    assert spec(1000, shard_size=1000).shard_count == 1
    assert spec(1001, shard_size=1000).shard_count == 2
    assert spec(1, shard_size=1000).shard_count == 1
    assert spec(25, shard_size=10).shard_count == 3


# ---- render_shard with a tiny untrained generator ----


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: the intra-op thread pool costs more than it gives
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("class_counts", [None, {"0": 20, "2": 5}])
def test_render_shard(class_counts: dict[str, int] | None) -> None:
    torch.manual_seed(0)
    config = GANConfig(image_size=28, channels=1, nz=8, width=8, num_classes=3, embed_dim=4)
    generator = Generator(config).eval()
    class_names = ["zero", "one", "two"]
    job = spec(25, shard_size=10, batch_size=4, seed=3, class_counts=class_counts)
    plan = labels_plan(job, 3)
    all_labels = []
    for index in range(job.shard_count):
        data, counts = render_shard(job, LoadedModel(generator, class_names, None), index)
        samples = list(read_shard(data))
        start, stop = index * 10, min(25, index * 10 + 10)
        assert [s.key for s in samples] == [sample_key(i) for i in range(start, stop)]
        labels = [s.label for s in samples]
        assert labels == labels_for_range(plan, start, stop).tolist()
        assert counts == {label: labels.count(label) for label in set(labels)}
        for offset, sample in enumerate(samples):
            assert sample.meta == {
                "class": sample.label,
                "class_name": class_names[sample.label],
                "model": job.model,
                "job": job.job_id,
                "seed": 3,
                "shard": index,
                "index": start + offset,
            }
        all_labels += labels
        assert render_shard(job, LoadedModel(generator, class_names, None), index)[0] == data  # re-rendering gives identical bytes
    assert np.bincount(all_labels, minlength=3).tolist() == plan


@pytest.mark.usefixtures("one_torch_thread")
def test_render_shard_unconditional() -> None:
    torch.manual_seed(0)
    config = GANConfig(image_size=28, channels=1, nz=8, width=8)
    generator = Generator(config).eval()
    data, counts = render_shard(spec(6, shard_size=4, batch_size=3), LoadedModel(generator, [], None), 1)
    samples = list(read_shard(data))
    assert [s.key for s in samples] == [sample_key(4), sample_key(5)]
    assert [s.label for s in samples] == [-1, -1]
    assert all(s.meta["class_name"] is None and s.meta["class"] == -1 for s in samples)
    assert counts == {-1: 2}
