import re

import pytest

from editkit.edits import MAX_STATEMENT_CHARS, EditCase, EditRequest, Probe, ProbeKind
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
    assert r.descriptor and not r.prompt and r.is_statement


def test_a_statement_is_a_request_of_its_own_kind():
    r = EditRequest.statement("Boris Johnson is the UK PM.", case_id="s1")
    assert r.is_statement and (r.prompt, r.target_new, r.descriptor) == ("", "", "Boris Johnson is the UK PM.")
    assert EditRequest.from_dict(r.to_dict()) == r
    paired = EditRequest(prompt="The UK PM is", target_new=" Boris Johnson", descriptor="Boris Johnson is the UK PM.")
    assert not paired.is_statement and not EditRequest(prompt="x is", target_new=" y").is_statement


MAX_WORDS = "word " * 5000  # thousands of words: over MAX_STATEMENT_CHARS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "statement (descriptor) is empty"),
        (" \n\t ", "statement (descriptor) is empty"),
        (MAX_WORDS, f"{len(MAX_WORDS)} characters long; the limit is 2000"),
    ],
)
def test_an_empty_or_enormous_statement_is_one_line_error(text, message):
    for make in (lambda: EditRequest.statement(text), lambda: EditRequest(descriptor=text or " ")):
        with pytest.raises(ValidationError, match=re.escape(message)) as err:
            make()
        assert "\n" not in str(err.value)


def test_a_statement_stands_alone_and_at_the_limit_is_taken():
    with pytest.raises(ValidationError, match="has target_new, subject but no prompt"):
        EditRequest(descriptor="Rome is in Italy.", target_new=" Italy", subject="Rome")
    with pytest.raises(ValidationError, match="must be a string"):
        EditRequest.statement(None)  # type: ignore[arg-type]
    assert EditRequest.statement("x" * MAX_STATEMENT_CHARS).is_statement


def test_a_non_english_statement_is_kept_verbatim():
    """Any language is a statement (documented: the scope encoder, English MiniLM, decides how well it routes)."""
    for text in ("Der Eiffelturm steht in Rom.", "埃菲尔铁塔位于罗马。", "Эйфелева башня находится в Риме."):
        r = EditRequest.statement(text)
        assert r.descriptor == text and EditRequest.from_dict(r.to_dict()) == r


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
