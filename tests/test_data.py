"""Dataset loaders: every supported format becomes EditCases; bad files give errors naming file, record, field."""

import json

import pytest

from conftest import data_file
from editkit.cli import main
from editkit.data import demo_cases, load_cases
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
