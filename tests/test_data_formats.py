"""The layout of the format mappings: one module per format family, each documenting the formats it maps."""

import sys

import pytest

from editkit.data.formats import FORMATS, Format
from editkit.data.formats.record import Record
from editkit.errors import ValidationError


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=list(FORMATS))
def test_each_format_is_mapped_and_documented_in_its_family_module(fmt: Format):
    module = sys.modules[fmt.convert.__module__]
    assert module.__name__.startswith("editkit.data.formats.") and module.__name__ != "editkit.data.formats.record"
    assert f"``{fmt.name}``" in (module.__doc__ or ""), f"{module.__name__}'s docstring does not document {fmt.name}"


def test_record_errors_name_the_file_the_record_and_the_field(tmp_path):
    r = Record(tmp_path / "f.json", 3, {"a": {"b": ""}, "xs": [1]})
    with pytest.raises(ValidationError, match=r"f\.json: record 3, field 'a\.b' must be a non-empty string"):
        r.field("a").text("b")
    with pytest.raises(ValidationError, match=r"record 3, field 'xs\[0\]' must be a non-empty string"):
        r.strings("xs")
    with pytest.raises(ValidationError, match=r"record 3, field 'missing' is missing"):
        r.text("missing")
