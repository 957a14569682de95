"""Hypothesis strategies for specs as they arrive from outside: dicts of near-valid and random JSON fields, so that
whole specs are often accepted and the success path is exercised too. Used by the spec property tests and by the
fault tests' fuzzed submissions."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import strategies as st

from shared.specs import BUILTIN_DATASETS, IMAGE_SIZES, LOSSES, SPEC_VERSION, GenerateSpec, TrainSpec

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | _text
json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children, max_size=3),
    max_leaves=6,
)
_valid_ids = st.sampled_from(["t-0123456789ab", "abc", "a" * 64]) | st.from_regex(
    r"[a-z0-9][a-z0-9-]{2,20}", fullmatch=True
)
_job_ids = st.one_of(_valid_ids, _valid_ids, st.sampled_from(["Abc", "../x", "", "a" * 65, "/abs"]) | _text)
_versions = st.sampled_from((SPEC_VERSION, SPEC_VERSION, SPEC_VERSION, 0, 2))


def _mixed(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # mostly near-valid values, so that whole specs are often accepted and the success path is exercised too
    return st.one_of(valid, valid, valid, valid, json_values)


_TRAIN_FIELDS = {
    "epochs": st.none() | st.integers(0, 10_001),
    "steps": st.none() | st.integers(0, 10_000_001),
    "image_size": st.none() | st.sampled_from((*IMAGE_SIZES, 48, 0)),
    "channels": st.none() | st.sampled_from((1, 2, 3)),
    "batch_size": st.integers(0, 5000),
    "conditional": st.none() | st.booleans(),
    "seed": st.integers(-1, 2**31),
    "nz": st.integers(0, 1025),
    "width": st.integers(3, 513),
    "lr": st.floats(0, 2),
    "beta1": st.floats(0, 1),
    "beta2": st.floats(0, 1),
    "loss": st.sampled_from((*LOSSES, "x")),
    "limit": st.none() | st.integers(0, 10**9),
    "log_every": st.integers(0, 10**7),
    "checkpoint_every": st.integers(0, 10**8),
    "version": _versions,
}
_class_counts = st.dictionaries(
    st.sampled_from(["0", "1", "2", "9", "01", "9999", "10000", "-1", "a", ""]) | _text,
    st.integers(-2, 60) | json_values,
    max_size=4,
)
_GENERATE_FIELDS = {
    "shard_size": st.integers(0, 100_001),
    "seed": st.integers(-1, 2**31),
    "batch_size": st.integers(0, 8193),
    "class_counts": st.none() | _class_counts,
    "version": _versions,
}


def _optional(kind: type, known: dict[str, st.SearchStrategy[Any]], required: set[str]) -> dict[str, Any]:
    """Every optional field of KIND: near-valid values where known here, random JSON for fields added later."""
    names = [spec_field.name for spec_field in msgspec.structs.fields(kind) if spec_field.name not in required]
    return {name: _mixed(known[name]) if name in known else json_values for name in names}


train_dicts = st.builds(
    lambda fixed, extra: {**extra, **fixed},
    st.fixed_dictionaries(
        {
            "job_id": _mixed(_job_ids),
            "dataset": _mixed(st.sampled_from((*BUILTIN_DATASETS, "imagefolder:/x", "imagefolder:", "mnist"))),
        },
        optional=_optional(TrainSpec, _TRAIN_FIELDS, {"job_id", "dataset"}),
    ),
    st.just({}) | st.just({}) | st.dictionaries(_text, json_values, max_size=2),
)
generate_dicts = st.builds(
    lambda fixed, extra: {**extra, **fixed},
    st.fixed_dictionaries(
        {"job_id": _mixed(_job_ids), "model": _mixed(_job_ids), "count": _mixed(st.integers(0, 200))},
        optional=_optional(GenerateSpec, _GENERATE_FIELDS, {"job_id", "model", "count"}),
    ),
    st.just({}) | st.just({}) | st.dictionaries(_text, json_values, max_size=2),
)
