"""Benchmark files -> EditCase, with format detection and errors that name the file, the record and the field.

Formats (see ``editkit data``); a file's format is detected from its first record, the most specific first (the
order of :data:`FORMATS`). Each format family maps its records in a module of its own, whose docstring says how:

* ``editkit``: editkit's own format for your edit cases (:mod:`editkit.data.formats.native`).
* ``mquake``: MQuAKE-CF, one-rewrite records (:mod:`editkit.data.formats.mquake`).
* ``counterfact``, ``counterfact-easyedit``: CounterFact in the full ROME schema and in EasyEdit's reduced one
  (:mod:`editkit.data.formats.counterfact`).
* ``counterfact-fc``, ``counterfact-fc-rewrite``: CounterFact (EasyEdit schema) as fact checking, evidence
  statements or rewrites as edits and true / false claims as probes; named with ``format``, never detected
  (:mod:`editkit.data.formats.factcheck`).
* ``zsre-mend``, ``zsre-tf``: zsRE in the MEND schema, and as QA-hard with true / false questions (named, never
  detected) (:mod:`editkit.data.formats.zsre`).
* ``wikibio``, ``knowedit``: KnowEdit's WikiBio, ZsRE and WikiData_counterfact
  (:mod:`editkit.data.formats.knowedit`).
* ``leapofthought``: LeapOfThought taxonomic claims as fact-checking edits
  (:mod:`editkit.data.formats.leapofthought`).
* ``convsent``: KnowEdit ConvSent as sentiment descriptor edits (:mod:`editkit.data.formats.convsent`).

Every mapping reads its records through :class:`~editkit.data.formats.record.Record`, whose errors name the file,
the record and the field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editkit.data.formats import convsent, counterfact, factcheck, knowedit, leapofthought, mquake, native, zsre
from editkit.data.formats.native import editkit_record
from editkit.data.formats.record import Record
from editkit.edits import EditCase
from editkit.errors import UnknownNameError, ValidationError
from editkit.files import require_file

__all__ = ["FORMATS", "Dataset", "Format", "detect_format", "editkit_record", "load_cases"]


@dataclass(frozen=True)
class Dataset:
    """Edit cases with where they came from (recorded in results)."""

    cases: list[EditCase]
    format: str
    path: Path
    sha256: str
    n_records: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (record index, why), with skip_invalid


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    detect: Callable[[dict[str, Any]], bool]
    convert: Callable[[Record], EditCase]


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "editkit",
            "editkit's own JSON lines: {request: {prompt, target_new, ...}, probes: [{prompt, expected, kind}]}",
            lambda rec: "request" in rec,
            native.editkit_case,
        ),
        Format(
            "mquake",
            "MQuAKE-CF (requested_rewrite list, multi-hop questions, new_single_hops); one-rewrite records only",
            lambda rec: isinstance(rec.get("requested_rewrite"), list),
            mquake.mquake_case,
        ),
        Format(
            "counterfact",
            "CounterFact, full ROME schema (requested_rewrite, paraphrase / neighborhood prompts)",
            lambda rec: "requested_rewrite" in rec,
            counterfact.rome_case,
        ),
        Format(
            "counterfact-easyedit",
            "CounterFact, EasyEdit schema (prompt, target_new, ground_truth, rephrase_prompt, locality_prompt)",
            lambda rec: "locality_prompt" in rec,
            counterfact.easyedit_case,
        ),
        Format(
            "counterfact-fc",
            "CounterFact (EasyEdit schema) as fact checking: the rewrite as an evidence statement, true / false "
            "claims (named, never detected)",
            lambda rec: "locality_prompt" in rec,
            factcheck.evidence_case,
        ),
        Format(
            "counterfact-fc-rewrite",
            "counterfact-fc's claims with the rewrite as a prompt / target edit, for weight editors (named, never "
            "detected)",
            lambda rec: "locality_prompt" in rec,
            factcheck.rewrite_case,
        ),
        Format(
            "zsre-mend",
            "zsRE, MEND schema (src, rephrase, alt, answers, loc, loc_ans, portability)",
            lambda rec: {"src", "alt"} <= set(rec),
            zsre.mend_case,
        ),
        Format(
            "zsre-tf",
            "zsRE (MEND schema) as QA-hard: the edit with true / false questions about it as hard in-scope inputs "
            "(named, never detected)",
            lambda rec: {"src", "alt"} <= set(rec),
            zsre.tf_case,
        ),
        Format(
            "wikibio",
            "KnowEdit WikiBio (text, labels, concept, locality): passage -> new continuation",
            lambda rec: {"text", "labels", "concept"} <= set(rec),
            knowedit.wikibio_case,
        ),
        Format(
            "leapofthought",
            "LeapOfThought true/false taxonomic claims (phrase, answer, metadata) as fact-checking edits",
            lambda rec: {"phrase", "answer", "metadata"} <= set(rec),
            leapofthought.leapofthought_case,
        ),
        Format(
            "convsent",
            "KnowEdit ConvSent (ent, pos, neg) as sentiment descriptor edits, alternating positive / negative",
            lambda rec: {"ent", "pos", "neg"} <= set(rec),
            convsent.convsent_case,
        ),
        Format(
            "knowedit",
            "KnowEdit ZsRE / WikiData_counterfact (prompt, target_new, ground_truth, locality, portability)",
            lambda rec: {"prompt", "target_new"} <= set(rec),
            knowedit.knowedit_case,
        ),
    )
}


def detect_format(first: dict[str, Any], path: Path) -> str:
    for fmt in FORMATS.values():
        if fmt.detect(first):
            return fmt.name
    raise ValidationError(
        f"{path}: cannot tell the format from the first record's fields {sorted(first)[:8]}; "
        f"pass one of: {', '.join(FORMATS)}"
    )


def load_cases(
    path: str | Path, *, format: str | None = None, limit: int | None = None, skip_invalid: bool = False
) -> Dataset:
    """Read a benchmark file (a JSON list, or JSON lines) into edit cases.

    A malformed record raises :class:`ValidationError` naming the file, the record and the field; with
    ``skip_invalid`` it is left out instead and listed in :attr:`Dataset.skipped` (public files have a few,
    e.g. an empty ``alt`` in zsRE's training split).
    """
    path = require_file(path, "data file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{path} is not UTF-8 text (byte {exc.start}): is it a data file?") from None
    try:
        records = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    except RecursionError:
        raise ValidationError(f"{path} is nested too deeply to be a data file") from None
    if not isinstance(records, list) or not records:
        raise ValidationError(f"{path} holds no records")
    first = records[0] if isinstance(records[0], dict) else {}
    if format is None:
        format = detect_format(first, path)
    elif format not in FORMATS:
        raise UnknownNameError("data format", format, FORMATS)
    elif not FORMATS[format].detect(first):
        raise ValidationError(
            f"{path} does not look like {format!r}: its first record has fields "
            f"{sorted(first)[:8]}; detected: {detect_format(first, path)!r}"
        )
    chosen = records[:limit] if limit is not None else records
    convert = FORMATS[format].convert
    cases: list[EditCase] = []
    skipped: list[tuple[int, str]] = []
    for i, rec in enumerate(chosen):
        try:
            cases.append(convert(Record(path, i, rec, file=records)))
        except ValidationError as exc:
            named = exc if str(exc).startswith(str(path)) else ValidationError(f"{path}: record {i}: {exc}")
            if not skip_invalid:
                raise named from None
            skipped.append((i, str(named)))
    if not cases:
        raise ValidationError(f"{path}: no valid records ({len(skipped)} invalid)")
    return Dataset(cases, format, path, hashlib.sha256(raw).hexdigest(), len(records), skipped)
