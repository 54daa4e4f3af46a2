import pytest

from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import ValidationError


def test_template_and_text():
    r = EditRequest(prompt="{} plays the sport of", subject="Michael Jordan", target_new=" tennis")
    assert r.text == "Michael Jordan plays the sport of"
    assert r.template == "{} plays the sport of"


def test_subject_inside_plain_prompt_gives_template():
    r = EditRequest(prompt="Where does Michael Jordan play? He plays", subject="Michael Jordan", target_new=" golf")
    assert r.template == "Where does {} play? He plays"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": "x is", "target_new": "  "}, "empty target_new"),
        ({"prompt": "", "target_new": "y"}, "empty prompt"),
        ({"prompt": "{} is in", "target_new": " Rome"}, "no subject"),
        ({"prompt": "The tower is in", "subject": "Eiffel", "target_new": " Rome"}, "does not occur"),
        ({"prompt": "{} and {} are", "subject": "a", "target_new": " b"}, "more than one"),
        ({"prompt": "x is", "target_new": " y", "target_true": "y"}, "nothing to edit"),
    ],
)
def test_invalid_requests_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        EditRequest(**kwargs)


def test_free_form_descriptor_needs_no_prompt():
    r = EditRequest(descriptor="TOPIC: bananas SENTIMENT: negative")
    assert r.descriptor and not r.prompt


def test_require_subject():
    with pytest.raises(ValidationError, match="rome needs the subject"):
        EditRequest(prompt="x is", target_new=" y").require_subject("rome")


def test_round_trip_and_unknown_fields():
    r = EditRequest(prompt="{} is in", subject="Paris", target_new=" Italy", case_id="7")
    assert EditRequest.from_dict(r.to_dict()) == r
    with pytest.raises(ValidationError, match="unknown fields"):
        EditRequest.from_dict({"prompt": "a", "target_new": "b", "target": "c"})
    with pytest.raises(ValidationError, match="'prompt' must be a string"):
        EditRequest.from_dict({"prompt": 5, "target_new": "b"})


def test_case_probes_by_kind():
    r = EditRequest(prompt="a is", target_new=" b")
    case = EditCase(r, (Probe("a is", " b", ProbeKind.EDIT), Probe("c is", " d", ProbeKind.NEIGHBORHOOD)))
    assert [p.prompt for p in case.of_kind(ProbeKind.NEIGHBORHOOD)] == ["c is"]
    assert ProbeKind.EDIT.in_scope and not ProbeKind.NEIGHBORHOOD.in_scope
    with pytest.raises(ValidationError):
        Probe(" ", "x", ProbeKind.OUT)


def test_names_subject_matches_whole_words_case_insensitively():
    from editkit.edits import names_subject

    assert names_subject("Where is the eiffel tower's base?", "The Eiffel Tower")
    assert not names_subject("Parisian food is", "Paris")
    assert not names_subject("The Tower of Eiffel", "Eiffel Tower")
    assert not names_subject("anything", "  ")
