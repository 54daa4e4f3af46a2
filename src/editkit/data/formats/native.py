"""editkit's own format (``editkit``): your edit cases in JSON lines.

JSON lines (a JSON list of the same objects is read too), one edit case per line::

    {"request": {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower",
                 "target_new": " Rome", "target_true": " Paris", "case_id": "demo-eiffel"},
     "probes": [{"prompt": "The Eiffel Tower is located in the city of", "expected": " Rome",
                 "kind": "edit", "contrast": " Paris"},
                {"prompt": "The Colosseum is located in the city of", "expected": " Rome", "kind": "out"}]}

(each object on a single line in the file). ``request`` holds the fields of :class:`~editkit.edits.EditRequest`:
``prompt`` (may hold ``{}`` where the ``subject`` goes; otherwise the subject, if given, must occur in it
verbatim), ``target_new``, and optional ``subject``, ``target_true``, ``descriptor`` (a free-form edit such as
``"TOPIC: bananas SENTIMENT: negative"``, whose ``prompt`` and ``target_new`` may then be empty) and
``case_id``, all strings. ``probes`` (optional; a case without probes can be applied but not evaluated) is a list
of objects with ``prompt``, ``expected`` (the answer the edited model should give), ``kind`` (``edit``,
``rephrase``, ``hard_in``, ``neighborhood`` or ``out``; see :class:`~editkit.edits.ProbeKind`), and optional
``contrast`` (the answer that should lose to ``expected``), ``aliases`` and ``contrast_aliases`` (lists of further
answers that count as ``expected`` / ``contrast``) and ``choice`` (true: a two-way question answered by whichever
of ``expected`` and ``contrast`` is likelier, as a claim labelled " True" / " False"). ``also`` (optional): a list
of further requests, applied together with ``request`` (a case whose probes need several facts changed). Answers
are continuations of their prompt and are used as written, so start them with the space a tokenizer expects after
the prompt (``" Rome"``).
Unknown fields are errors. :func:`editkit_record` writes a case in this format; the package's demo edits
(``editkit/data/demo_edits.jsonl``) are an example file.
"""

from __future__ import annotations

from typing import Any

from editkit.data.formats.record import Record
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import ValidationError

_PROBE_FIELDS = ("prompt", "expected", "kind", "contrast", "aliases", "contrast_aliases", "choice")


def editkit_case(r: Record) -> EditCase:
    r.only(("request", "probes", "also"))
    also = tuple(_editkit_request(a) for a in r.objects("also", optional=True))
    probes = tuple(_editkit_probe(p) for p in r.objects("probes", optional=True))
    return EditCase(_editkit_request(r.field("request")), probes, also=also)


def _editkit_request(request: Record) -> EditRequest:
    try:
        return EditRequest.from_dict(request.rec)
    except ValidationError as exc:
        raise ValidationError(f"{request.where()}: {exc}") from None


def _editkit_probe(p: Record) -> Probe:
    p.only(_PROBE_FIELDS)
    kind = p.text("kind", strict=True)
    if kind not in {k.value for k in ProbeKind}:
        valid = ", ".join(k.value for k in ProbeKind)
        raise ValidationError(f"{p.where('kind')} is {kind!r}; valid kinds: {valid}")
    prompt, expected = p.text("prompt", strict=True), p.text("expected", strict=True)
    contrast = p.text("contrast", optional=True, strict=True)
    aliases, contrast_aliases = p.strings("aliases", optional=True), p.strings("contrast_aliases", optional=True)
    choice = p.rec.get("choice", False)
    if not isinstance(choice, bool):
        raise ValidationError(f"{p.where('choice')} must be true or false, got {choice!r}")
    try:
        return Probe(
            prompt,
            expected,
            ProbeKind(kind),
            contrast,
            aliases=aliases,
            contrast_aliases=contrast_aliases,
            choice=choice,
        )
    except ValidationError as exc:
        raise ValidationError(f"{p.where()}: {exc}") from None


def editkit_record(case: EditCase) -> dict[str, Any]:
    """A case as a record of the ``editkit`` format (write ``json.dumps`` of each, one per line)."""
    rec = {"request": case.request.to_dict(), "probes": [_probe_record(p) for p in case.probes]}
    if case.also:
        rec["also"] = [r.to_dict() for r in case.also]
    return rec


def _probe_record(p: Probe) -> dict[str, Any]:
    rec: dict[str, Any] = {"prompt": p.prompt, "expected": p.expected, "kind": p.kind.value}
    if p.contrast is not None:
        rec["contrast"] = p.contrast
    if p.aliases:
        rec["aliases"] = list(p.aliases)
    if p.contrast_aliases:
        rec["contrast_aliases"] = list(p.contrast_aliases)
    if p.choice:
        rec["choice"] = True
    return rec
