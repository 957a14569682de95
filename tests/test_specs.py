"""shared.specs: valid specs round-trip; every invalid spec is a one-line SpecError naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.specs import (
    LOSSES,
    SPEC_VERSION,
    GenerateSpec,
    SpecError,
    TrainSpec,
    check_job_id,
    rebalance_counts,
)
from tests.support.strategies import generate_dicts, json_values, train_dicts

TRAIN = {"job_id": "t-0123456789ab", "dataset": "fake"}
GENERATE = {"job_id": "g-0123456789ab", "model": "t-0123456789ab", "count": 100}


def train(**changes: Any) -> dict[str, Any]:
    return {**TRAIN, **changes}


def generate(**changes: Any) -> dict[str, Any]:
    return {**GENERATE, **changes}


# ---- valid specs ----


@pytest.mark.parametrize(
    "data",
    [
        TRAIN,
        train(dataset="fashion-mnist", epochs=3, image_size=28, channels=1, conditional=True, loss="hinge"),
        train(dataset="cifar10", steps=10, image_size=64, channels=3, conditional=False, batch_size=4096, arch="resnet"),
        train(dataset="imagefolder:/data/cats", lr=1e-6, beta1=0.0, beta2=0.9999, limit=1, width=4, nz=1),
        train(dataset="imagefolder:s3://bucket/images", lr=1, seed=2**31 - 1, log_every=1, checkpoint_every=1),
        train(lr=1, beta1=0),  # ints are fine for float fields
        train(mode_seeking=0.5, teacher=2, guidance=0.5, teacher_steps=10, ema=0.999),
        train(version=SPEC_VERSION),
        train(version=0),  # what a spec without a version is (shared/formats.py): the same fields
    ],
)
def test_valid_train_spec_round_trips(data: dict[str, Any]) -> None:
    spec = TrainSpec.from_dict(data)
    assert isinstance(spec, TrainSpec)
    as_dict = spec.to_dict()
    for key, value in data.items():
        assert as_dict[key] == value
    assert TrainSpec.from_dict(as_dict) == spec


def test_train_defaults() -> None:
    spec = TrainSpec.from_dict(TRAIN)
    assert (spec.epochs, spec.steps, spec.image_size, spec.channels, spec.conditional) == (None,) * 5
    assert spec.version == SPEC_VERSION
    assert spec.loss in LOSSES
    # every default is itself valid: the defaults alone make a spec
    assert TrainSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "data",
    [
        GENERATE,
        generate(count=1, shard_size=1, seed=0, batch_size=1),
        generate(count=100_000_000, shard_size=100_000, seed=2**31 - 1, batch_size=8192),
        generate(count=10, class_counts={"0": 3, "1": 0, "9": 7}),
        generate(count=5, class_counts={"9999": 5}),
        generate(noise_scale=1.25),
    ],
)
def test_valid_generate_spec_round_trips(data: dict[str, Any]) -> None:
    spec = GenerateSpec.from_dict(data)
    as_dict = spec.to_dict()
    for key, value in data.items():
        assert as_dict[key] == value
    assert GenerateSpec.from_dict(as_dict) == spec


def test_spec_is_frozen() -> None:
    spec = TrainSpec.from_dict(TRAIN)
    with pytest.raises(AttributeError):
        spec.epochs = 3  # type: ignore[misc]


# ---- invalid specs ----


def assert_spec_error(kind: Any, data: Any, field: str, *mentions: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        kind.from_dict(data)
    error = info.value
    message = str(error)
    assert error.field == field
    assert f": {field}: " in message, message
    assert message.startswith(f"invalid {kind.kind} spec: ")
    assert "\n" not in message
    for mention in mentions:
        assert mention in message, (mention, message)
    return error


@pytest.mark.parametrize(
    ("data", "field", "mentions"),
    [
        # unknown and missing fields
        (train(colour="red"), "colour", ("unknown field", "allowed fields are", "batch_size", "job_id")),
        ({"job_id": "t-abc"}, "dataset", ("is required",)),
        ({"dataset": "fake"}, "job_id", ("is required",)),
        # wrong types
        (train(epochs=True), "epochs", ("True", "an integer")),
        (train(batch_size=False), "batch_size", ("an integer",)),
        (train(seed="1"), "seed", ("'1'", "an integer")),
        (train(nz=100.0), "nz", ("an integer",)),
        (train(image_size="64"), "image_size", ("an integer",)),
        (train(lr="0.1"), "lr", ("'0.1'", "a number")),
        (train(beta1=True), "beta1", ("a number",)),
        (train(beta2=None), "beta2", ("a number",)),
        (train(conditional="yes"), "conditional", ("true or false",)),
        (train(conditional=1), "conditional", ("true or false",)),
        (train(loss=5), "loss", ("a string",)),
        (train(width=[64]), "width", ("an integer",)),
        # out of range
        (train(epochs=0), "epochs", ("out of range", "1 to 10000")),
        (train(epochs=10_001), "epochs", ("out of range",)),
        (train(steps=0), "steps", ("out of range",)),
        (train(batch_size=4097), "batch_size", ("out of range", "1 to 4096")),
        (train(seed=-1), "seed", ("out of range",)),
        (train(seed=2**31), "seed", ("out of range",)),
        (train(width=3), "width", ("out of range", "4 to 512")),
        (train(lr=0.0), "lr", ("out of range",)),
        (train(lr=1.5), "lr", ("out of range",)),
        (train(lr=float("nan")), "lr", ("out of range",)),
        (train(lr=float("inf")), "lr", ("out of range",)),
        (train(beta1=1.0), "beta1", ("out of range",)),
        (train(limit=0), "limit", ("out of range",)),
        # allowed values
        (train(image_size=48), "image_size", ("48", "28, 32, 64")),
        (train(image_size=0), "image_size", ("28, 32, 64",)),
        (train(channels=2), "channels", ("2", "1 or 3")),
        (train(channels=4), "channels", ("1 or 3",)),
        (train(loss="x"), "loss", ("'x'", "bce, hinge")),
        (train(loss="BCE"), "loss", ("bce, hinge",)),
        (train(arch="stylegan"), "arch", ("'stylegan'", "dcgan, resnet")),
        (train(epochs=1, steps=1), "steps", ("epochs", "steps", "not both")),
        (train(mode_seeking=-0.1), "mode_seeking", ("-0.1",)),
        (train(guidance=1.0, teacher=0), "guidance", ("needs a teacher", "teacher=3")),
        (train(dataset="mnist"), "dataset", ("'mnist'", "fashion-mnist, cifar10, fake", "imagefolder:")),
        (train(dataset="imagefolder:"), "dataset", ("imagefolder:",)),
        (train(dataset=None), "dataset", ("None",)),
        # job ids
        (train(job_id="Abc-123"), "job_id", ("'Abc-123'", "a-z, 0-9", "3-64")),
        (train(job_id="../x"), "job_id", ("'../x'",)),
        (train(job_id=""), "job_id", ("''",)),
        (train(job_id="a" * 65), "job_id", ("3-64",)),
        (train(job_id="/abs"), "job_id", ("'/abs'",)),
        (train(job_id="ab"), "job_id", ("3-64",)),
        (train(job_id="-abc"), "job_id", ()),
        (train(job_id="abc_def"), "job_id", ()),
        (train(job_id="abc/def"), "job_id", ()),
        (train(job_id=123), "job_id", ("123",)),
        (train(job_id=None), "job_id", ()),
        # a long tail
        (train(imbalance=10), "imbalance", ("needs per_class",)),
        (train(per_class=50, imbalance=0.5), "imbalance", ("0.5", "out of range", "use 1 to 1000")),
        # versions
        (train(version=2), "version", ("format 2, newer than this reader (format 1)", "upgrade gan-augment")),
        (train(version=-1), "version", ("-1", "reads formats 0 to 1")),
        (train(version="1"), "version", ("'1'", "reads formats 0 to 1")),
        (train(version=True), "version", ("True", "reads formats 0 to 1")),
        # not an object at all
        ([("job_id", "t-abc")], "spec", ("JSON object", "list")),
        ("t-abc", "spec", ("JSON object", "str")),
    ],
)
def test_invalid_train_spec(data: Any, field: str, mentions: tuple[str, ...]) -> None:
    assert_spec_error(TrainSpec, data, field, *mentions)


@pytest.mark.parametrize(
    ("data", "field", "mentions"),
    [
        (generate(shards=3), "shards", ("unknown field", "class_counts")),
        ({"job_id": "g-abc", "model": "t-abc"}, "count", ("is required",)),
        (generate(count=0), "count", ("out of range",)),
        (generate(count=True), "count", ("an integer",)),
        (generate(count=1.5), "count", ("an integer",)),
        (generate(count="100"), "count", ("an integer",)),
        (generate(shard_size=0), "shard_size", ("out of range",)),
        (generate(noise_scale=0), "noise_scale", ("out of range",)),
        (generate(shard_size=100_001), "shard_size", ("out of range",)),
        (generate(batch_size=8193), "batch_size", ("out of range",)),
        (generate(seed=-5), "seed", ("out of range",)),
        (generate(model="Model-1"), "model", ("'Model-1'", "3-64")),
        (generate(model="../t-abc"), "model", ()),
        (generate(model=""), "model", ()),
        (generate(model="/models/t-abc"), "model", ()),
        (generate(job_id="a" * 65), "job_id", ()),
        (generate(version=2), "version", ("newer than this reader",)),
        (generate(targets="soft"), "targets", ("'soft'", "agree, hard, teacher")),
        # class_counts
        (generate(count=10, class_counts={"0": 5, "1": 4}), "class_counts", ("add up to 9", "count=10")),
        (generate(count=10, class_counts={"0": 11, "1": -1}), "class_counts", ("-1", "non-negative")),
        (generate(count=10, class_counts={"a": 10}), "class_counts", ("'a'", "class index")),
        (generate(count=10, class_counts={"-1": 10}), "class_counts", ("'-1'", "class index")),
        (generate(count=10, class_counts={"1.0": 10}), "class_counts", ("class index",)),
        (generate(count=10, class_counts={"": 10}), "class_counts", ("class index",)),
        (generate(count=10, class_counts={"10000": 10}), "class_counts", ("class index",)),
        (generate(count=10, class_counts={0: 10}), "class_counts", ("class index",)),
        (generate(count=10, class_counts={"0": 10.0}), "class_counts", ("10.0", "non-negative integer")),
        (generate(count=1, class_counts={"0": True}), "class_counts", ("non-negative integer",)),
        (generate(count=10, class_counts={"0": "10"}), "class_counts", ("non-negative integer",)),
        (generate(count=10, class_counts={}), "class_counts", ("non-empty",)),
        (generate(count=10, class_counts=[10]), "class_counts", ("non-empty",)),
        (generate(count=10, class_counts="0:10"), "class_counts", ("non-empty",)),
    ],
)
def test_invalid_generate_spec(data: Any, field: str, mentions: tuple[str, ...]) -> None:
    assert_spec_error(GenerateSpec, data, field, *mentions)


def test_direct_construction_validates_too() -> None:
    with pytest.raises(SpecError, match="image_size"):
        TrainSpec(job_id="t-abc", dataset="fake", image_size=48)


@pytest.mark.parametrize("job_id", ["abc", "t-0123456789ab", "a" * 64, "0-0", "abc-"])
def test_check_job_id_accepts(job_id: str) -> None:
    assert check_job_id(job_id) == job_id


@pytest.mark.parametrize("job_id", ["Abc", "../x", "", "a" * 65, "/abs", "ab", "-ab", "a b", "a.b", "é-abc"])
def test_check_job_id_refuses(job_id: str) -> None:
    with pytest.raises(SpecError, match="job_id"):
        check_job_id(job_id)


@pytest.mark.parametrize("job_id", ["abc\n", "t-0123456789ab\n"])
def test_check_job_id_refuses_trailing_newline(job_id: str) -> None:
    with pytest.raises(SpecError):
        GenerateSpec.from_dict(generate(job_id=job_id))


@pytest.mark.parametrize("label", ["²", "①", "0" * 4301])
def test_class_counts_non_decimal_digit_keys_are_spec_errors(label: str) -> None:
    with pytest.raises(SpecError) as info:
        GenerateSpec.from_dict(generate(count=10, class_counts={label: 10}))
    assert info.value.field == "class_counts"


def test_class_counts_duplicate_class_is_refused() -> None:
    with pytest.raises(SpecError) as info:
        spec = GenerateSpec.from_dict(generate(count=10, class_counts={"1": 5, "01": 5}))
        from worker.generate import labels_plan  # reached only if the spec is wrongly accepted

        assert sum(labels_plan(spec, 2)) == spec.count  # what goes wrong downstream when it is accepted
    assert info.value.field == "class_counts"


def test_unknown_field_with_newline_gives_one_line_message() -> None:
    with pytest.raises(SpecError) as info:
        TrainSpec.from_dict(train(**{"bad\nfield": 1}))
    assert "\n" not in str(info.value)


# ---- property: from_dict never fails with anything but SpecError ----


def _check_parse(kind: Any, data: dict[str, Any]) -> None:
    try:
        spec = kind.from_dict(data)
    except SpecError as error:
        assert isinstance(error.field, str)
        assert str(error).startswith(f"invalid {kind.kind} spec: ")
        return
    assert isinstance(spec, kind)
    assert kind.from_dict(spec.to_dict()) == spec


@settings(max_examples=500, deadline=None)
@given(train_dicts)
def test_train_from_dict_only_raises_spec_error(data: dict[str, Any]) -> None:
    _check_parse(TrainSpec, data)


@settings(max_examples=500, deadline=None)
@given(generate_dicts)
def test_generate_from_dict_only_raises_spec_error(data: dict[str, Any]) -> None:
    _check_parse(GenerateSpec, data)


@settings(max_examples=200, deadline=None)
@given(st.one_of(train_dicts, generate_dicts, json_values))
def test_any_json_only_raises_spec_error(data: Any) -> None:
    for kind in (TrainSpec, GenerateSpec):
        try:
            kind.from_dict(data)
        except SpecError:
            pass


def test_a_rebalancing_plan_brings_every_class_to_the_target_and_the_spec_keeps_it_whole():
    assert rebalance_counts({"0": 500, "1": 120, "2": 10}, 500) == {"0": 0, "1": 380, "2": 490}
    assert rebalance_counts({"10": 3, "2": 7}, 5) == {"2": 0, "10": 2}  # in class order, not string order
    plan = dict(model="t-abc", count=870, class_counts={"0": 0, "1": 380, "2": 490}, real_counts={"0": 500, "1": 120, "2": 10},
                rebalance_to=500)
    assert GenerateSpec.from_dict({"job_id": "g-abc", **plan}).rebalance_to == 500
    with pytest.raises(SpecError, match="not the rebalancing plan to 400"):
        GenerateSpec.from_dict({"job_id": "g-abc", **plan, "rebalance_to": 400})
    with pytest.raises(SpecError, match="needs both real_counts and rebalance_to"):
        GenerateSpec.from_dict({"job_id": "g-abc", **{**plan, "rebalance_to": None}})
