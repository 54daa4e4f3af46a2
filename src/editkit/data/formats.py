"""Benchmark files -> EditCase, with format detection and errors that name the file, the record and the field.

Formats (see ``editkit data``):

* ``counterfact``: CounterFact in the full ROME schema (:mod:`editkit.data.counterfact`).
* ``counterfact-easyedit``: CounterFact in EasyEdit's reduced schema (``prompt, subject, target_new,
  ground_truth, rephrase_prompt, locality_prompt, locality_ground_truth``).
* ``zsre-mend``: zsRE in the MEND schema (``src, rephrase, alt, answers, loc, loc_ans``, optional
  ``portability``).
* ``knowedit``: KnowEdit's ZsRE and WikiData_counterfact files (``prompt, subject, target_new,
  ground_truth``, optional ``rephrase_prompt``, ``locality`` and ``portability`` probe groups).

Targets are scored as continuations, so they get a leading space.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editkit.data.counterfact import counterfact_case
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import UnknownNameError, ValidationError


@dataclass(frozen=True)
class Dataset:
    """Edit cases with where they came from (recorded in results)."""

    cases: list[EditCase]
    format: str
    path: Path
    sha256: str
    n_records: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (record index, why), with skip_invalid


class _Record:
    """Field access that names the file, the record and the field in its errors."""

    def __init__(self, path: Path, index: int, rec: Any) -> None:
        if not isinstance(rec, dict):
            raise ValidationError(f"{path}: record {index} is {type(rec).__name__}, not an object")
        self.path, self.index, self.rec = path, index, rec

    def where(self, name: str) -> str:
        return f"{self.path}: record {self.index}, field {name!r}"

    def text(self, name: str, *, optional: bool = False) -> str | None:
        if name not in self.rec or self.rec[name] is None:
            if optional:
                return None
            raise ValidationError(f"{self.where(name)} is missing")
        value = self.rec[name]
        if isinstance(value, list) and value and isinstance(value[0], str):
            value = value[0]  # several accepted answers: the first is the reference
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(f"{self.where(name)} must be a non-empty string, got {value!r}")
        return value

    def groups(self, name: str) -> list[tuple[str, str]]:
        """``{group: [{prompt, ground_truth}]}`` -> ``[(prompt, answer)]`` (KnowEdit's probe groups)."""
        value = self.rec.get(name) or {}
        if not isinstance(value, dict):
            raise ValidationError(f"{self.where(name)} must be an object of probe groups")
        out = []
        for group, items in value.items():
            for j, item in enumerate(items if isinstance(items, list) else [items]):
                sub = _Record(self.path, self.index, item)
                try:
                    out.append((sub.text("prompt") or "", sub.text("ground_truth") or ""))
                except ValidationError as exc:
                    raise ValidationError(f"{exc} (in {name}.{group}[{j}])") from None
        return out


def _space(s: str) -> str:
    return s if s.startswith(" ") else " " + s


def _request(r: _Record, prompt: str, subject: str | None, new: str, true: str | None, case_id: str) -> EditRequest:
    if subject is not None and subject not in prompt:
        subject = None  # some rephrased questions drop the entity; such cases cannot be located
    if true is not None and true.strip() == new.strip():
        true = None
    try:
        return EditRequest(
            prompt=prompt,
            subject=subject,
            target_new=_space(new),
            target_true=_space(true) if true else None,
            case_id=case_id,
        )
    except ValidationError as exc:
        raise ValidationError(f"{r.path}: record {r.index}: {exc}") from None


def _edit_and_rephrase(
    r: _Record,
    *,
    prompt: str,
    subject: str,
    new: str,
    true: str,
    rephrase: str,
    required: tuple[str, ...] = (),
    contrast: bool = True,
) -> tuple[EditRequest, list[Probe]]:
    """The request and its in-scope probes (edit prompt, rephrase), from the named fields of a record."""
    req = _request(
        r,
        r.text(prompt) or "",
        r.text(subject, optional=subject not in required),
        r.text(new) or "",
        r.text(true, optional=true not in required),
        str(r.rec.get("case_id", r.index)),
    )
    against = req.target_true if contrast else None
    probes = [Probe(req.text, req.target_new, ProbeKind.EDIT, contrast=against)]
    if text := r.text(rephrase, optional=True):
        probes.append(Probe(text, req.target_new, ProbeKind.REPHRASE, contrast=against))
    return req, probes


def _easyedit_counterfact(r: _Record) -> EditCase:
    req, probes = _edit_and_rephrase(
        r,
        prompt="prompt",
        subject="subject",
        new="target_new",
        true="ground_truth",
        rephrase="rephrase_prompt",
        required=("subject", "ground_truth"),
    )
    if loc := r.text("locality_prompt", optional=True):
        truth = _space(r.text("locality_ground_truth") or "")
        probes.append(Probe(loc, truth, ProbeKind.NEIGHBORHOOD, contrast=req.target_new))
    return EditCase(req, tuple(probes))


def _zsre_mend(r: _Record) -> EditCase:
    req, probes = _edit_and_rephrase(
        r, prompt="src", subject="subject", new="alt", true="answers", rephrase="rephrase", contrast=False
    )
    if loc := r.text("loc", optional=True):
        probes.append(Probe(loc, _space(r.text("loc_ans") or ""), ProbeKind.OUT))
    port = r.rec.get("portability")
    if isinstance(port, dict) and port.get("New Question"):
        sub = _Record(r.path, r.index, port)
        probes.append(Probe(sub.text("New Question") or "", _space(sub.text("New Answer") or ""), ProbeKind.HARD_IN))
    return EditCase(req, tuple(probes))


def _knowedit(r: _Record) -> EditCase:
    req, probes = _edit_and_rephrase(
        r, prompt="prompt", subject="subject", new="target_new", true="ground_truth", rephrase="rephrase_prompt"
    )
    probes += [Probe(p, _space(a), ProbeKind.NEIGHBORHOOD) for p, a in r.groups("locality")]
    probes += [Probe(p, _space(a), ProbeKind.HARD_IN) for p, a in r.groups("portability")]
    return EditCase(req, tuple(probes))


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    detect: Callable[[dict[str, Any]], bool]
    convert: Callable[[_Record], EditCase]


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "counterfact",
            "CounterFact, full ROME schema (requested_rewrite, paraphrase / neighborhood prompts)",
            lambda rec: "requested_rewrite" in rec,
            lambda r: counterfact_case(r.rec, r.path, r.index),
        ),
        Format(
            "counterfact-easyedit",
            "CounterFact, EasyEdit schema (prompt, target_new, ground_truth, rephrase_prompt, locality_prompt)",
            lambda rec: "locality_prompt" in rec,
            _easyedit_counterfact,
        ),
        Format(
            "zsre-mend",
            "zsRE, MEND schema (src, rephrase, alt, answers, loc, loc_ans, portability)",
            lambda rec: {"src", "alt"} <= set(rec),
            _zsre_mend,
        ),
        Format(
            "knowedit",
            "KnowEdit ZsRE / WikiData_counterfact (prompt, target_new, ground_truth, locality, portability)",
            lambda rec: {"prompt", "target_new"} <= set(rec),
            _knowedit,
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
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"data file {path} does not exist")
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    try:
        records = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
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
            cases.append(convert(_Record(path, i, rec)))
        except ValidationError as exc:
            if not skip_invalid:
                raise
            skipped.append((i, str(exc)))
    if not cases:
        raise ValidationError(f"{path}: no valid records ({len(skipped)} invalid)")
    return Dataset(cases, format, path, hashlib.sha256(raw).hexdigest(), len(records), skipped)
