"""Each training default is declared once, beside its spec field: `augment train`'s options, their help and the
README's table of defaults are read from there (producer/options.py)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import msgspec

from producer.cli import main
from producer.options import default_words, offered
from shared.specs import TrainSpec

README = Path(__file__).resolve().parent.parent / "README.md"
TRAIN = main.commands["train"]
FIELDS = {field.name: field for field in offered(TrainSpec)}


def readme_defaults() -> dict[str, str]:
    """The training table of the README: the field of each row's first flag -> its default cell."""
    text = README.read_text()
    table = text[text.index("| flag | default | what it does |"):].split("\n\n", 1)[0].splitlines()[2:]
    rows = {}
    for row in table:
        flag_cell, default_cell = [cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:3]]
        first = re.findall(r"--([a-z-]+)", flag_cell)[0]
        rows[first.replace("-", "_")] = default_cell
    return rows


def test_the_readmes_table_of_defaults_says_what_the_spec_declares() -> None:
    rows = readme_defaults()
    assert len(rows) >= 12, rows
    assert set(rows) <= set(FIELDS), set(rows) - set(FIELDS)
    assert {name: default_words(FIELDS[name]) for name in rows} == rows


def test_every_option_of_augment_train_comes_from_a_spec_field() -> None:
    options = {parameter.name: parameter for parameter in TRAIN.params if isinstance(parameter, click.Option)}
    assert set(options) - {"help"} == set(FIELDS)
    for name, field in FIELDS.items():
        option = options[name]
        assert option.default is None, name  # not given: the spec's default, or its automatic choice, applies
        if not option.required:
            assert f"default: {default_words(field).replace('`', '')}" in (option.help or ""), name
    assert options["dataset"].required and "--conditional" in options["conditional"].opts
    assert options["loss"].type.choices == ("bce", "hinge")  # type: ignore[attr-defined]
    assert "4 to 512; default: 64" in (options["width"].help or "")  # the range, from the field's Meta


def test_a_field_without_an_option_is_not_offered() -> None:
    names = {field.name for field in msgspec.structs.fields(TrainSpec)}
    assert {"job_id", "nz", "lr", "version"} <= names - set(FIELDS)
