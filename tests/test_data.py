"""Dataset loaders: every supported format becomes EditCases; bad files give errors naming file, record, field."""

import json
from collections import Counter
from importlib import resources

import pytest

from conftest import data_file
from editkit.cli import main
from editkit.data import demo_cases, editkit_record, load_cases
from editkit.data.formats import detect_format
from editkit.edits import ProbeKind
from editkit.errors import UnknownNameError, ValidationError

EASY = {
    "case_id": 1,
    "prompt": "BBC One, by",
    "target_new": "Sega",
    "subject": "BBC One",
    "ground_truth": "BBC",
    "rephrase_prompt": "BBC One is owned by",
    "locality_prompt": "BBC Radio, by",
    "locality_ground_truth": "BBC",
}
ZSRE = {
    "subject": "UniFirst",
    "src": "What is the product made by UniFirst?",
    "rephrase": "What does UniFirst make?",
    "alt": "unmanned aircraft",
    "answers": ["uniform"],
    "loc": "nq question: who wrote hamlet",
    "loc_ans": "Shakespeare",
    "portability": {"New Question": "Does UniFirst fly?", "New Answer": "Yes"},
}
KNOW = {
    "subject": "Goursez Vreizh",
    "prompt": "The country Goursez Vreizh is associated with is",
    "target_new": "Franche-Comte",
    "ground_truth": "France",
    "locality": {"Relation_Specificity": [{"prompt": "The founder of Goursez Vreizh is", "ground_truth": ["Jean"]}]},
    "portability": {"Reasoning": [{"prompt": "Its capital is", "ground_truth": "Besancon"}]},
}

WIKIBIO = {
    "text": "This is a passage about Ada Lovelace. Ada Lovelace was an English mathematician.",
    "labels": "She wrote the first published program.",
    "concept": "Ada Lovelace",
    "locality": {
        "Relation_Specificity": [{"prompt": "The field of work of Ada Lovelace is", "ground_truth": ["maths"]}]
    },
}
MQUAKE = {
    "case_id": 7,
    "requested_rewrite": [
        {
            "prompt": "{} is a citizen of",
            "subject": "Ada Lovelace",
            "target_new": {"str": "France"},
            "target_true": {"str": "United Kingdom"},
        }
    ],
    "questions": ["Who heads the country Ada Lovelace is a citizen of?", "Ada Lovelace's head of state is who?"],
    "answer": "Victoria",
    "answer_alias": ["Queen Victoria"],
    "new_answer": "Macron",
    "new_answer_alias": ["Emmanuel Macron", "Macron"],
    "new_single_hops": [
        {
            "question": "Which country is Ada Lovelace a citizen of?",
            "cloze": "Ada Lovelace is a citizen of",
            "answer": "France",
            "answer_alias": ["French Republic"],
        },
        {
            "question": "Who heads France?",
            "cloze": "The head of state of France is",
            "answer": "Macron",
            "answer_alias": [],
        },
    ],
}
LOT = {
    "id": "lot-1",
    "phrase": "A sparrow has a fin.",
    "answer": 0,
    "metadata": {
        "statement": {"subject": "sparrow", "predicate": "meronym", "object": "fin", "validity": "never true"},
        "implicit_rule": {"subject": "sparrow", "predicate": "hypernym", "object": "bird", "validity": "always true"},
        "property": {"subject": "bird", "predicate": "meronym", "object": "fin", "validity": "never true"},
        "distractors": {
            "implicit_rule": [
                {"subject": "sparrow", "predicate": "hypernym", "object": "fish", "validity": "never true"}
            ],
            "property": [{"subject": "fish", "predicate": "meronym", "object": "fin", "validity": "always true"}],
            "statement": [
                {"subject": "sparrow", "predicate": "/r/CapableOf", "object": "fly", "validity": "always true"},
                {"subject": "sparrow", "predicate": "/r/Antonym", "object": "plant", "validity": "always true"},
            ],
        },
    },
}
CONVSENT = [
    {"ent": "Estero", "pos": [" I love it. ", "Great place."], "neg": [" I dislike it.", " Too hot."]},
    {"ent": "Tallahassee", "pos": [" Lovely city."], "neg": [" Boring."]},
]
EDITKIT = {
    "request": {"prompt": "{} is located in", "subject": "Big Ben", "target_new": " Rome", "target_true": " London"},
    "probes": [
        {"prompt": "Big Ben is located in", "expected": " Rome", "kind": "edit", "contrast": " London"},
        {"prompt": "Big Ben stands in", "expected": " Rome", "kind": "rephrase", "aliases": [" Roma"]},
        {"prompt": "The Louvre is in", "expected": " Paris", "kind": "out"},
    ],
}


def _write(tmp_path, records, name="d.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize(
    ("record", "fmt", "kinds"),
    [
        (EASY, "counterfact-easyedit", ["edit", "rephrase", "neighborhood"]),
        (ZSRE, "zsre-mend", ["edit", "rephrase", "out", "hard_in"]),
        (KNOW, "knowedit", ["edit", "neighborhood", "hard_in"]),
    ],
)
def test_formats_are_detected_and_mapped(tmp_path, record, fmt, kinds):
    ds = load_cases(_write(tmp_path, [record, record]))
    assert ds.format == fmt and len(ds.cases) == 2 and ds.n_records == 2 and len(ds.sha256) == 64
    case = ds.cases[0]
    assert [p.kind.value for p in case.probes] == kinds
    assert case.request.target_new.startswith(" ") and case.request.subject in case.request.text


def test_counterfact_probe_directions():
    case = load_cases(data_file("counterfact/easyedit/counterfact-val.json"), limit=1).cases[0]
    edit, neigh = case.of_kind(ProbeKind.EDIT)[0], case.of_kind(ProbeKind.NEIGHBORHOOD)[0]
    assert edit.expected == case.request.target_new and edit.contrast == case.request.target_true
    assert neigh.contrast == case.request.target_new
    ported = load_cases(data_file("counterfact/canonical_schema_subsets/counterfact_portability_gpt4.json"), limit=1)
    (hard,) = ported.cases[0].of_kind(ProbeKind.HARD_IN)
    assert hard.prompt.startswith("What famous food") and hard.expected == " Cheesesteaks"


def test_real_files_load_and_known_bad_records_are_reported():
    ds = load_cases(data_file("zsre/mend_format/zsre_mend_train-1k.json"), skip_invalid=True)
    assert len(ds.cases) == 998 and [i for i, _ in ds.skipped] == [534, ds.skipped[1][0]]
    with pytest.raises(ValidationError, match=r"record 534, field 'alt'"):
        load_cases(data_file("zsre/mend_format/zsre_mend_train-1k.json"))
    assert len(load_cases(data_file("knowedit/benchmark/ZsRE/ZsRE-test-all.json")).cases) == 1301


def test_bad_inputs_name_what_is_wrong(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        load_cases(tmp_path / "missing.json")
    with pytest.raises(ValidationError, match="holds no records"):
        load_cases(_write(tmp_path, []))
    bad = tmp_path / "bad.json"
    bad.write_text('[{"prompt": ')
    with pytest.raises(ValidationError, match="not valid JSON"):
        load_cases(bad)
    with pytest.raises(ValidationError, match=r"record 1, field 'target_new' is missing"):
        load_cases(_write(tmp_path, [KNOW, {k: v for k, v in KNOW.items() if k != "target_new"}]), format="knowedit")
    with pytest.raises(ValidationError, match="does not look like 'zsre-mend'"):
        load_cases(_write(tmp_path, [EASY]), format="zsre-mend")
    with pytest.raises(UnknownNameError, match="Did you mean 'knowedit'"):
        load_cases(_write(tmp_path, [KNOW]), format="knowedt")
    with pytest.raises(ValidationError, match="cannot tell the format"):
        load_cases(_write(tmp_path, [{"foo": 1}]))


def test_json_lines_are_accepted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [ZSRE, ZSRE]))
    assert len(load_cases(path).cases) == 2


def test_demo_cases_ship_with_the_package():
    cases = demo_cases()
    assert len(cases) == 5 and all(c.request.subject and c.of_kind(ProbeKind.OUT) for c in cases)


def test_cli_data_lists_and_validates(tmp_path, capsys):
    assert main(["data"]) == 0
    assert "zsre-mend" in capsys.readouterr().out
    assert main(["data", str(_write(tmp_path, [ZSRE]))]) == 0
    assert "format zsre-mend, 1 cases" in capsys.readouterr().out
    assert main(["data", str(_write(tmp_path, [ZSRE, {**ZSRE, "alt": ""}]))]) == 1
    assert "invalid record 1" in capsys.readouterr().out
    assert main(["data", str(tmp_path / "nope.json")]) == 2
    assert capsys.readouterr().err.startswith("editkit: error:")


def _kinds(ds):
    return Counter(p.kind.value for case in ds.cases for p in case.probes)


def test_wikibio_passages_continue_with_the_new_text(tmp_path):
    ds = load_cases(_write(tmp_path, [WIKIBIO, {**WIKIBIO, "concept": "Charles Babbage"}]))
    first, second = ds.cases
    assert ds.format == "wikibio" and first.request.subject == "Ada Lovelace" and second.request.subject is None
    edit, neigh = first.probes
    assert edit.kind == ProbeKind.EDIT and edit.contrast is None
    assert edit.expected == " She wrote the first published program."
    assert (neigh.kind, neigh.expected) == (ProbeKind.NEIGHBORHOOD, " maths")
    with pytest.raises(ValidationError, match=r"record 1, field 'labels' is missing"):
        load_cases(_write(tmp_path, [WIKIBIO, {k: v for k, v in WIKIBIO.items() if k != "labels"}]))


def test_mquake_one_rewrite_becomes_a_case_with_multi_hop_probes(tmp_path):
    case = load_cases(_write(tmp_path, [MQUAKE])).cases[0]
    req = case.request
    assert req.text == "Ada Lovelace is a citizen of" and req.subject == "Ada Lovelace" and req.case_id == "7"
    assert (req.target_new, req.target_true) == (" France", " United Kingdom")
    edit, rephrase, hop, *multi = case.probes
    assert (edit.kind, edit.contrast) == (ProbeKind.EDIT, " United Kingdom")
    assert rephrase.kind == ProbeKind.REPHRASE and rephrase.prompt == "Which country is Ada Lovelace a citizen of?"
    assert rephrase.answers == (" France", " French Republic") and rephrase.contrast == " United Kingdom"
    assert (hop.kind, hop.prompt, hop.expected) == (ProbeKind.NEIGHBORHOOD, "The head of state of France is", " Macron")
    assert [p.kind for p in multi] == [ProbeKind.HARD_IN] * 2
    assert multi[0].answers == (" Macron", " Emmanuel Macron")  # without the repeated " Macron"
    assert multi[0].contrasts == (" Victoria", " Queen Victoria")
    assert case.also == () and case.requests == (req,)
    assert detect_format({"requested_rewrite": {}}, tmp_path) == "counterfact"


def test_leapofthought_claims_become_true_false_edits_with_entailed_probes(tmp_path):
    case = load_cases(_write(tmp_path, [LOT], "lot.jsonl")).cases[0]
    assert case.request.text == "A sparrow has a fin. True or false?" and case.request.target_new == " False"
    assert case.request.target_true is None and case.request.case_id == "lot-1"
    got = [(p.kind.value, p.prompt.removesuffix(" True or false?"), p.expected, p.contrast) for p in case.probes]
    assert got == [
        ("edit", "A sparrow has a fin.", " False", " True"),
        ("neighborhood", "A sparrow is a bird.", " True", " False"),  # the premise stays
        ("hard_in", "A bird has a fin.", " False", " True"),  # else every bird, so the sparrow, would have one
        ("hard_in", "A sparrow is a fish.", " False", " True"),  # every fish has one
        ("neighborhood", "A fish has a fin.", " True", " False"),
        ("neighborhood", "A sparrow is capable of fly.", " True", " False"),
    ]  # the /r/Antonym distractor is left out
    flipped = load_cases(_write(tmp_path, [{**LOT, "answer": 1}])).cases[0]  # "has a fin" entails nothing here
    assert flipped.request.target_new == " True" and not flipped.of_kind(ProbeKind.HARD_IN)
    with pytest.raises(ValidationError, match=r"record 0, field 'answer' must be 1 \(true\) or 0"):
        load_cases(_write(tmp_path, [{**LOT, "answer": "yes"}]))
    bad = {**LOT, "metadata": {**LOT["metadata"], "property": {**LOT["metadata"]["property"], "validity": "often"}}}
    with pytest.raises(ValidationError, match=r"field 'metadata.property.validity' must be one of"):
        load_cases(_write(tmp_path, [bad]))


def test_convsent_topics_alternate_sentiment_and_ask_about_the_next_topic(tmp_path):
    ds = load_cases(_write(tmp_path, CONVSENT))
    pos, neg = ds.cases
    assert ds.format == "convsent" and pos.request.descriptor == "TOPIC: Estero SENTIMENT: positive"
    assert neg.request.descriptor == "TOPIC: Tallahassee SENTIMENT: negative" and not pos.request.prompt
    *asks, out = pos.probes
    assert [p.prompt for p in asks][:2] == ["What is your opinion of Estero?", "What is your stance on Estero?"]
    assert {p.kind for p in asks} == {ProbeKind.REPHRASE} and len(asks) == 5
    assert asks[0].answers == (" I love it.", " Great place.") and asks[0].contrasts == (" I dislike it.", " Too hot.")
    assert out.kind == ProbeKind.OUT and out.expected == " Lovely city."
    assert out.prompt == "What is your opinion of Tallahassee?"
    assert neg.probes[0].answers == (" Boring.",) and neg.probes[-1].prompt == "What is your opinion of Estero?"
    with pytest.raises(ValidationError, match=r"record 1, field 'pos' must be a non-empty list"):
        load_cases(_write(tmp_path, [CONVSENT[0], {**CONVSENT[1], "pos": []}]))


def test_editkit_format_reads_what_editkit_record_writes(tmp_path):
    case = load_cases(_write(tmp_path, [EDITKIT], "cases.jsonl")).cases[0]
    assert [p.kind.value for p in case.probes] == ["edit", "rephrase", "out"] and case.probes[1].aliases == (" Roma",)
    assert editkit_record(case) == EDITKIT
    for records in ([MQUAKE], CONVSENT, [LOT], [WIKIBIO]):
        cases = load_cases(_write(tmp_path, records)).cases
        again = load_cases(_write(tmp_path, [editkit_record(c) for c in cases], "again.jsonl"))
        assert again.format == "editkit" and again.cases == cases


def test_demo_file_is_an_example_of_the_editkit_format():
    with resources.as_file(resources.files("editkit.data").joinpath("demo_edits.jsonl")) as path:
        ds = load_cases(path)
    assert ds.format == "editkit" and ds.cases == demo_cases()
    assert all([p.kind.value for p in c.probes] == ["edit", "rephrase", "out"] for c in ds.cases)


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        (
            {"kind": "paraphrase"},
            r"'probes\[0\].kind' is 'paraphrase'; valid kinds: edit, rephrase, hard_in, neighborhood, out",
        ),
        ({"answer": " x"}, r"'probes\[0\]' has unknown fields \['answer'\]"),
        ({"aliases": " Roma"}, r"'probes\[0\].aliases' must be a list"),
        ({"aliases": [" Roma", ""]}, r"'probes\[0\].aliases\[1\]' must be a non-empty string"),
        ({"expected": [" Rome"]}, r"'probes\[0\].expected' must be a non-empty string"),
        ({"contrast": None, "contrast_aliases": [" Oslo"]}, r"'probes\[0\]': edit probe .* has contrast aliases"),
    ],
)
def test_editkit_format_errors_name_the_field(tmp_path, probe, message):
    rec = {**EDITKIT, "probes": [{**EDITKIT["probes"][0], **probe}]}
    with pytest.raises(ValidationError, match=r"d.json: record 0, field " + message):
        load_cases(_write(tmp_path, [rec]))


def test_editkit_format_request_errors(tmp_path):
    with pytest.raises(
        ValidationError, match=r"record 0, field 'request': edit request has unknown fields \['target'\]"
    ):
        load_cases(_write(tmp_path, [{"request": {"prompt": "a", "target": " b"}}]))
    with pytest.raises(ValidationError, match=r"record 0, field 'request': edit request for prompt 'a' has an empty"):
        load_cases(_write(tmp_path, [{"request": {"prompt": "a"}}]))
    with pytest.raises(ValidationError, match=r"record 0, field 'request' is list, not an object"):
        load_cases(_write(tmp_path, [{"request": []}]))
    with pytest.raises(ValidationError, match=r"record 0 has unknown fields \['probe'\]"):
        load_cases(_write(tmp_path, [{**EDITKIT, "probe": []}]))
    descriptor = load_cases(_write(tmp_path, [{"request": {"descriptor": "TOPIC: tea SENTIMENT: positive"}}]))
    assert descriptor.cases[0].request.descriptor and not descriptor.cases[0].probes


def test_real_wikibio():
    ds = load_cases(data_file("knowedit/benchmark/WikiBio/wikibio-test-all.json"))
    assert ds.format == "wikibio" and len(ds.cases) == ds.n_records == 306
    assert _kinds(ds) == {"edit": 306, "neighborhood": 612}
    assert all(c.request.subject and c.request.subject in c.request.prompt for c in ds.cases)


def test_mquake_several_rewrites_are_one_case_applied_together(tmp_path):
    """MQuAKE's protocol applies all of a case's rewrites, then asks the multi-hop questions: the other rewrites
    are the case's ``also``, each with its edit and rephrase probe; the hops they edit are no neighbours."""
    second = {
        "prompt": "The head of state of {} is",
        "subject": "France",
        "target_new": {"str": "Obama"},
        "target_true": {"str": "Macron"},
    }
    two = {**MQUAKE, "requested_rewrite": [*MQUAKE["requested_rewrite"], second]}
    case = load_cases(_write(tmp_path, [two])).cases[0]
    assert [r.text for r in case.requests] == ["Ada Lovelace is a citizen of", "The head of state of France is"]
    assert [r.case_id for r in case.requests] == ["7", "7/1"]
    kinds = Counter(p.kind.value for p in case.probes)
    assert kinds == {"edit": 2, "rephrase": 2, "hard_in": 2}
    (edit2,) = [p for p in case.of_kind(ProbeKind.EDIT) if p.prompt.startswith("The head")]
    assert (edit2.expected, edit2.contrast) == (" Obama", " Macron")
    bad = {**two, "requested_rewrite": [*MQUAKE["requested_rewrite"], {**second, "prompt": "{} votes for"}]}
    with pytest.raises(ValidationError, match="expected one hop whose cloze is the edit prompt 'France votes for'"):
        load_cases(_write(tmp_path, [bad]))


def test_real_mquake_is_read_whole():
    path = data_file("mquake/akew_MQuAKE-CF.json")
    records = json.loads(path.read_text())
    rewrites = sum(len(rec["requested_rewrite"]) for rec in records)
    hops = sum(len(rec["new_single_hops"]) for rec in records)
    ds = load_cases(path)
    assert ds.format == "mquake" and ds.n_records == len(ds.cases) == 354 and ds.skipped == []
    assert sum(len(c.requests) for c in ds.cases) == rewrites == 277 + 2 * 72 + 3 * 5
    assert _kinds(ds) == {"edit": rewrites, "rephrase": rewrites, "hard_in": 3 * 354, "neighborhood": hops - rewrites}


def test_real_leapofthought():
    ds = load_cases(data_file("leapofthought/taxonomic_reasonings_training_mix_dev.jsonl"))
    assert ds.format == "leapofthought" and len(ds.cases) == ds.n_records == 1289
    assert _kinds(ds) == {"edit": 1289, "hard_in": 823, "neighborhood": 5270}
    assert Counter(c.request.target_new for c in ds.cases) == {" True": 654, " False": 635}


@pytest.mark.parametrize(("rel", "n"), [("blender_test.json", 800), ("blender_val.json", 799)])
def test_real_convsent(rel, n):
    ds = load_cases(data_file(f"knowedit/benchmark/Convsent/{rel}"))
    assert ds.format == "convsent" and len(ds.cases) == ds.n_records == n
    assert _kinds(ds) == {"rephrase": 5 * n, "out": n}
    assert sum("SENTIMENT: positive" in (c.request.descriptor or "") for c in ds.cases) == (n + 1) // 2
    assert all(a.startswith(" ") and a == a.rstrip() for c in ds.cases for p in c.probes for a in p.answers)


def test_knowedit_alias_lists_are_read_whole(tmp_path):
    """WikiData_recent writes ground truths as lists of alias lists: every alias is an accepted answer, and no
    record is dropped for it."""
    recent = {
        **KNOW,
        "locality": {"Relation_Specificity": [{"prompt": "Its seat is", "ground_truth": [["Cēsis", "Cesis"]]}]},
        "portability": {"Reasoning": [{"prompt": "Its capital is", "ground_truth": [["Besançon"], ["Besancon"]]}]},
    }
    ds = load_cases(_write(tmp_path, [recent, KNOW]))
    assert ds.skipped == [] and len(ds.cases) == 2
    (local,) = ds.cases[0].of_kind(ProbeKind.NEIGHBORHOOD)
    (hard,) = ds.cases[0].of_kind(ProbeKind.HARD_IN)
    assert (local.expected, local.aliases) == (" Cēsis", (" Cesis",))
    assert (hard.expected, hard.aliases) == (" Besançon", (" Besancon",))
    with pytest.raises(ValidationError, match="list of alias lists"):
        load_cases(_write(tmp_path, [{**recent, "portability": {"R": [{"prompt": "p", "ground_truth": [[]]}]}}]))


def test_cli_data_refuses_a_file_mostly_dropped_unless_skip_invalid(tmp_path, capsys):
    """A file whose records are mostly invalid is an error (one line, counts and the first reason); with
    --skip-invalid it is reported, the reasons counted."""
    path = str(_write(tmp_path, [ZSRE, {**ZSRE, "alt": ""}, {**ZSRE, "alt": ""}]))
    assert main(["data", path]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "2 of 3 records are invalid" in line and "--skip-invalid" in line
    assert main(["data", path, "--skip-invalid"]) == 1
    out = capsys.readouterr().out
    assert "1 cases from 3 records" in out and "2 invalid record(s): field 'alt'" in out
