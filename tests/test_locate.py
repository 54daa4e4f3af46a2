"""The locate-and-edit machinery ROME, MEMIT and AlphaEdit share (editkit.editors.locate)."""

import pytest

from editkit.editors.locate import subject_last_index
from editkit.errors import ValidationError
from editkit.models.tiny import tiny_model


def test_subject_last_index_points_at_the_subjects_last_token():
    lm = tiny_model("llama")
    text = "The city of the Eiffel Tower is"
    end = text.index("Tower") + len("Tower")
    idx = subject_last_index(lm, text, end)
    ids = lm.encode(text)
    assert lm.tokenizer.decode(ids[: idx + 1]).endswith("Tower")
    assert not lm.tokenizer.decode(ids[:idx]).endswith("Tower")
    with pytest.raises(ValidationError):
        subject_last_index(lm, text, 0)
