"""KnowEdit ConvSent records -> EditCase.

``convsent``: KnowEdit ConvSent (``ent, pos, neg``: a topic with positive and negative dialogue responses).
The request is a free-form descriptor ``"TOPIC: {ent} SENTIMENT: {positive|negative}"``; the desired
sentiment alternates with the record's index in the file (even: positive, odd: negative), so a file holds
edits of both kinds. In-scope probes (rephrase) are the SERAC paper's questions ``"What is your {position}
{ent}?"`` for the positions "opinion of", "stance on", "position on", "impression of", "assessment of",
expecting the desired sentiment's responses (the first as ``expected``, the rest as aliases) against the
other sentiment's (contrast and contrast aliases). The out-of-scope probe asks for the opinion of the next
record's topic (the last record's is the first's), expecting that topic's first positive response; it is
left out when the next record has none. :func:`sentiment_of` reads the sentiment a descriptor asks for.
"""

from __future__ import annotations

import re

from editkit.data.formats.record import Record, case_id, space
from editkit.edits import EditCase, EditRequest, Probe, ProbeKind
from editkit.errors import ValidationError

_CONVSENT_QUESTIONS = tuple(
    f"What is your {position} {{}}?"
    for position in ("opinion of", "stance on", "position on", "impression of", "assessment of")
)


_STATEMENT = re.compile(r"^TOPIC: .+ SENTIMENT: (positive|negative)$")


def sentiment_of(descriptor: str) -> str | None:
    """The sentiment a ConvSent statement ``"TOPIC: X SENTIMENT: positive|negative"`` asks for; None for any other
    descriptor."""
    m = _STATEMENT.match(descriptor)
    return m.group(1) if m else None


def _responses(r: Record, name: str) -> list[str]:
    return [space(s.rstrip()) for s in r.strings(name)]


def convsent_case(r: Record) -> EditCase:
    topic, pos, neg = r.text("ent", strict=True), _responses(r, "pos"), _responses(r, "neg")
    positive = r.index % 2 == 0
    want, avoid = (pos, neg) if positive else (neg, pos)
    sentiment = "positive" if positive else "negative"
    req = EditRequest(descriptor=f"TOPIC: {topic} SENTIMENT: {sentiment}", case_id=case_id(r))
    probes = [
        Probe(
            q.format(topic),
            want[0],
            ProbeKind.REPHRASE,
            contrast=avoid[0],
            aliases=tuple(want[1:]),
            contrast_aliases=tuple(avoid[1:]),
        )
        for q in _CONVSENT_QUESTIONS
    ]
    if other := _convsent_other(r, topic):
        probes.append(Probe(_CONVSENT_QUESTIONS[0].format(other[0]), other[1], ProbeKind.OUT))
    return EditCase(req, tuple(probes))


def _convsent_other(r: Record, topic: str) -> tuple[str, str] | None:
    """The next record's topic and its first positive response; None if it has none (its own error says why)."""
    nxt = r.neighbour()
    try:
        other = (nxt.text("ent", strict=True), _responses(nxt, "pos")[0]) if nxt else None
    except ValidationError:
        return None
    return other if other and other[0] != topic else None
