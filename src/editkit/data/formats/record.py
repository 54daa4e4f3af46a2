"""What every format's mapping is built from: field access that names the file, the record and the field in its
errors (:class:`Record`), and the request and in-scope probes most formats share. Targets of benchmark files are
scored as continuations, so they get a leading space (:func:`space`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, overload

from editkit.edits import EditRequest, Probe, ProbeKind
from editkit.errors import ValidationError


class Record:
    """Field access that names the file, the record and the field in its errors.

    ``at`` is where a nested object sits in its record (``requested_rewrite[0]``); ``file`` holds all the
    file's records, for converters that look at a record's neighbour.
    """

    def __init__(self, path: Path, index: int, rec: Any, at: str = "", file: Sequence[Any] = ()) -> None:
        if not isinstance(rec, dict):
            where = f"record {index}, field {at!r}" if at else f"record {index}"
            raise ValidationError(f"{path}: {where} is {type(rec).__name__}, not an object")
        self.path, self.index, self.rec, self.at, self.file = path, index, rec, at, file

    def _name(self, name: str) -> str:
        return f"{self.at}.{name}" if self.at else name

    def where(self, name: str | None = None) -> str:
        full = self._name(name) if name else self.at
        return f"{self.path}: record {self.index}, field {full!r}" if full else f"{self.path}: record {self.index}"

    def has(self, name: str) -> bool:
        return self.rec.get(name) is not None

    def only(self, known: Iterable[str]) -> None:
        if unknown := sorted(set(self.rec) - set(known)):
            raise ValidationError(f"{self.where()} has unknown fields {unknown}; known: {sorted(known)}")

    @overload
    def text(self, name: str, *, optional: Literal[False] = False, strict: bool = False) -> str: ...

    @overload
    def text(self, name: str, *, optional: bool, strict: bool = False) -> str | None: ...

    def text(self, name: str, *, optional: bool = False, strict: bool = False) -> str | None:
        """A non-empty string. Unless ``strict``, a list of strings (several accepted answers) gives its first."""
        if not self.has(name):
            if optional:
                return None
            raise ValidationError(f"{self.where(name)} is missing")
        value = self.rec[name]
        if not strict and isinstance(value, list) and value and isinstance(value[0], str):
            value = value[0]  # several accepted answers: the first is the reference
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(f"{self.where(name)} must be a non-empty string, got {value!r}")
        return value

    def field(self, name: str) -> Record:
        """A nested object; its errors name the path to it."""
        if not self.has(name):
            raise ValidationError(f"{self.where(name)} is missing")
        return Record(self.path, self.index, self.rec[name], self._name(name), self.file)

    def items(self, name: str, *, optional: bool = False) -> list[Any]:
        """A list; required ones must be non-empty, optional ones may be missing or empty."""
        value = self.rec.get(name)
        if value is None and optional:
            return []
        if not isinstance(value, list) or not (value or optional):
            what = "a list" if optional else "a non-empty list"
            raise ValidationError(f"{self.where(name)} must be {what}, got {value!r:.80}")
        return value

    def objects(self, name: str, *, optional: bool = False) -> list[Record]:
        return [
            Record(self.path, self.index, item, f"{self._name(name)}[{j}]", self.file)
            for j, item in enumerate(self.items(name, optional=optional))
        ]

    def strings(self, name: str, *, optional: bool = False) -> tuple[str, ...]:
        values = self.items(name, optional=optional)
        for j, value in enumerate(values):
            if not isinstance(value, str) or not value.strip():
                raise ValidationError(f"{self.where(f'{name}[{j}]')} must be a non-empty string, got {value!r}")
        return tuple(values)

    def neighbour(self) -> Record | None:
        """The next record of the file (the first after the last); None if there is no other object."""
        if len(self.file) < 2:
            return None
        j = (self.index + 1) % len(self.file)
        return Record(self.path, j, self.file[j], file=self.file) if isinstance(self.file[j], dict) else None

    def answers(self, name: str) -> tuple[str, ...]:
        """Every accepted answer, in order and without repeats: a string, a list of strings, or a list of alias
        lists (KnowEdit's WikiData_recent writes ``[["Cesis", "Cēsis"]]``), flattened."""
        value = self.rec.get(name)
        flat = value if isinstance(value, list) else [value]
        flat = [a for item in flat for a in (item if isinstance(item, list) else [item])]
        if not flat or any(not isinstance(a, str) or not a.strip() for a in flat):
            raise ValidationError(
                f"{self.where(name)} must be an answer, a list of answers or a list of alias lists, got {value!r:.80}"
            )
        return tuple(dict.fromkeys(flat))

    def groups(self, name: str) -> list[tuple[str, tuple[str, ...]]]:
        """``{group: [{prompt, ground_truth}]}`` -> ``[(prompt, answers)]`` (KnowEdit's probe groups; every alias
        of a ground truth is an accepted answer, the first the reference)."""
        value = self.rec.get(name) or {}
        if not isinstance(value, dict):
            raise ValidationError(f"{self.where(name)} must be an object of probe groups")
        out = []
        for group, items in value.items():
            for j, item in enumerate(items if isinstance(items, list) else [items]):
                sub = Record(self.path, self.index, item)
                try:
                    out.append((sub.text("prompt"), sub.answers("ground_truth")))
                except ValidationError as exc:
                    raise ValidationError(f"{exc} (in {name}.{group}[{j}])") from None
        return out


def space(s: str) -> str:
    return s if s.startswith(" ") else " " + s


def case_id(r: Record, name: str = "case_id") -> str:
    return str(r.rec.get(name, r.index))


def request(r: Record, prompt: str, subject: str | None, new: str, true: str | None, case_id: str) -> EditRequest:
    if subject is not None and "{}" not in prompt and subject not in prompt:
        subject = None  # some rephrased questions drop the entity; such cases cannot be located
    if true is not None and true.strip() == new.strip():
        true = None
    try:
        return EditRequest(
            prompt=prompt,
            subject=subject,
            target_new=space(new),
            target_true=space(true) if true else None,
            case_id=case_id,
        )
    except ValidationError as exc:
        raise ValidationError(f"{r.path}: record {r.index}: {exc}") from None


def edit_and_rephrase(
    r: Record,
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
    req = request(
        r,
        r.text(prompt),
        r.text(subject, optional=subject not in required),
        r.text(new),
        r.text(true, optional=true not in required),
        case_id(r),
    )
    against = req.target_true if contrast else None
    probes = [Probe(req.text, req.target_new, ProbeKind.EDIT, contrast=against)]
    if text := r.text(rephrase, optional=True):
        probes.append(Probe(text, req.target_new, ProbeKind.REPHRASE, contrast=against))
    return req, probes
