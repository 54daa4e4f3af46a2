"""editkit.service: the thread-safe edit service over weight editors and memory editors, on tiny random models."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pytest
import torch

from editkit.editors import create_editor
from editkit.editors.base import Capabilities, EditHandle, Editor, ParamChange
from editkit.edits import EditRequest
from editkit.errors import ValidationError
from editkit.models.lm import LanguageModel
from editkit.models.tiny import tiny_model
from editkit.service import EditService

FACTS = [
    ("The Eiffel Tower is located in the city of", " Rome"),
    ("Michael Jordan plays the sport of", " tennis"),
    ("The capital of Germany is", " Bonn"),
    ("Apple was founded by", " Bill Gates"),
    ("The official language of Brazil is", " Spanish"),
    ("Lionel Messi plays the sport of", " golf"),
]
REQUESTS = [EditRequest(prompt=p, target_new=t) for p, t in FACTS]
FAR = "Who is the prime minister of the United Kingdom?"


def _together(workers: Sequence[Callable[[], None]], readers: Sequence[Callable[[], None]]) -> None:
    """Run ``workers`` once each and ``readers`` in a loop until every worker is done, all in threads; any
    exception in any thread fails the test."""
    errors: list[BaseException] = []
    done = threading.Event()

    def run(fn: Callable[[], None], loop: bool) -> None:
        try:
            fn()
            while loop and not done.is_set():
                fn()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    readers_ = [threading.Thread(target=run, args=(fn, True)) for fn in readers]
    workers_ = [threading.Thread(target=run, args=(fn, False)) for fn in workers]
    for t in readers_ + workers_:
        t.start()
    for t in workers_:
        t.join()
    done.set()
    for t in readers_:
        t.join()
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------- weight editors
def test_weight_edits_from_threads_are_listed_once_and_roll_back_last_in_first_out_bit_for_bit() -> None:
    lm = tiny_model("llama")
    original = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    service = EditService(lm, create_editor("ft", {"steps": 1, "lr": 1e-2}))
    before = service.generate([FAR, *(r.text for r in REQUESTS)], 3)

    def reader() -> None:
        edits = service.list()
        assert len({e.handle_id for e in edits}) == len(edits)  # one request per apply here
        assert set(service.explain(FAR)["handles"]) >= {e.handle_id for e in edits}
        service.generate([FAR], 2)

    applied = []
    _together([lambda r=r: applied.append(service.apply([r])) for r in REQUESTS], [reader, reader])
    edits = service.list()
    assert sorted(e.handle_id for e in edits) == sorted(f"h{i}" for i in range(1, len(REQUESTS) + 1))
    assert sorted(e.request.text for e in edits) == sorted(r.text for r in REQUESTS)
    assert all(a.edits == tuple(e for e in edits if e.handle_id == a.handle_id) for a in applied)
    assert all(e.parameters and e.edit_id is None for e in edits)
    assert service.explain(FAR) == {"answered_by": "weights", "handles": [f"h{i}" for i in range(1, 7)]}

    with pytest.raises(ValidationError, match=r"h1 cannot be rolled back before h2, h3, h4, h5, h6"):
        service.rollback("h1")  # every FT edit changed the same layer
    with pytest.raises(ValidationError, match="roll back a handle id"):
        service.rollback(1)
    with pytest.raises(ValidationError, match="no applied edit 'h9'"):
        service.rollback("h9")
    assert len(service.list()) == len(REQUESTS)  # refusals change nothing
    for i in range(len(REQUESTS), 0, -1):
        assert [e.handle_id for e in service.rollback(f"h{i}")] == [f"h{i}"]
    assert service.list() == []
    assert all(torch.equal(p, original[n]) for n, p in lm.model.named_parameters())
    assert service.generate([FAR, *(r.text for r in REQUESTS)], 3) == before


class _TwoSteps(Editor):
    """Adds 1 to two parameters with a pause between them: a reader between the two would see half an edit."""

    name = "two-steps"
    capabilities: ClassVar[Capabilities] = Capabilities(storage="weights")

    def apply(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> EditHandle:
        (na, a), (nb, b) = list(lm.model.named_parameters())[:2]
        old = a.detach().clone(), b.detach().clone()
        with torch.no_grad():
            a.add_(1.0)
            time.sleep(0.002)
            b.add_(1.0)
        changes = {na: ParamChange(old[0], a.detach().clone()), nb: ParamChange(old[1], b.detach().clone())}
        return EditHandle(self.name, {}, list(requests), lm, changes=changes)


class _Probe(LanguageModel):
    """A model whose "answer" is how far its first two parameters moved: equal numbers, unless half-edited."""

    start: tuple[float, ...] = ()

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 16, **kwargs: Any) -> list[str]:
        a, b = (p.detach().view(-1)[0] for p in list(self.model.parameters())[:2])
        return [f"{float(a) - self.start[0]:.0f} {float(b) - self.start[1]:.0f}"]


@pytest.mark.parametrize("locked", [True, False])
def test_readers_never_see_half_an_edit(locked: bool) -> None:
    """With the service's lock no reader sees one parameter edited and not the other; without it (the check of
    this test itself) readers do."""
    base = tiny_model("llama")
    lm = _Probe(base.model, base.tokenizer, name="probe")
    lm.start = tuple(float(p.detach().view(-1)[0]) for p in list(lm.model.parameters())[:2])
    service = EditService(lm, _TwoSteps())
    if not locked:
        service._lock = contextlib.nullcontext()  # type: ignore[assignment]
    seen: set[str] = set()

    def reader() -> None:
        seen.add(service.generate(["x"])[0])

    def writer() -> None:
        for _ in range(20):
            service.apply([REQUESTS[0]])

    _together([writer], [reader, reader])
    half = {s for s in seen if len(set(s.split())) > 1}
    assert bool(half) is not locked, seen
    assert len(service.list()) == 20


# --------------------------------------------------------------------------- memory editors
def _rp_service(**settings: Any) -> EditService:
    rp = create_editor("rp", {"scope": "embed-untrained", "encoder": "tiny-bert", "threshold": 0.0, **settings})
    return EditService(tiny_model("llama"), rp)


def test_memory_edits_from_threads_are_listed_once_with_their_journal_ids() -> None:
    service = _rp_service()
    memory = service.model.memory  # type: ignore[attr-defined]

    def reader() -> None:
        edits = service.list()
        assert len({e.edit_id for e in edits}) == len(edits) == len({e.handle_id for e in edits})
        explained = service.explain(FAR)
        assert explained["answered_by"] == ("edit" if len(memory) else "base")
        service.generate([FAR], 2)

    applied = []
    _together([lambda r=r: applied.append(service.apply([r])) for r in REQUESTS], [reader, reader])
    edits = service.list()
    assert sorted(e.request.text for e in edits) == sorted(r.text for r in REQUESTS)
    assert [e.edit_id for e in edits] == [r.id for r in memory.store.active()]
    assert sorted(e.handle_id for e in edits) == sorted(a.handle_id for a in applied)
    for a in applied:
        assert a.edits == tuple(e for e in edits if e.handle_id == a.handle_id) and len(a.edits) == 1
    explained = service.explain(FAR)
    owner = next(e for e in edits if e.edit_id == explained["edit_id"])
    assert explained["handle_id"] == owner.handle_id


def test_memory_rollback_by_journal_id_or_by_handle() -> None:
    service = _rp_service()
    single = service.apply([REQUESTS[0]])
    pair = service.apply(REQUESTS[1:3])
    first, second = (e.edit_id for e in pair.edits)
    assert [e.edit_id for e in service.rollback(first)] == [first]  # one edit of a two-edit apply
    assert pair.handle.applied and [e.edit_id for e in service.list() if e.handle_id == pair.handle_id] == [second]
    with pytest.raises(ValidationError, match=f"edit {first} is not an active edit"):
        service.rollback(first)
    assert [e.edit_id for e in service.rollback(pair.handle_id)] == [second]
    assert not pair.handle.applied
    with pytest.raises(ValidationError, match="no applied edit"):
        service.rollback(pair.handle_id)
    assert [e.handle_id for e in service.rollback(single.edits[0].edit_id)] == [single.handle_id]
    assert not single.handle.applied and service.list() == []
    assert service.explain(FAR)["answered_by"] == "base"


def test_a_memory_rollback_brings_back_the_edit_it_replaced_and_lists_earlier_edits(tmp_path: Any) -> None:
    path = tmp_path / "memory.sqlite"
    older = _rp_service(memory=str(path)).apply([REQUESTS[0]]).edits[0]
    service = _rp_service(memory=f"sqlite://{path}")  # a memory made by another process: listed, no handle
    assert [(e.request, e.handle_id) for e in service.list()] == [(REQUESTS[0], None)]
    newer = service.apply([EditRequest(prompt=REQUESTS[0].prompt, target_new=" Berlin")])
    assert [e.request.target_new for e in service.list()] == [" Berlin"]
    service.rollback(newer.handle_id)
    (back,) = service.list()
    assert back.request == REQUESTS[0] and back.edit_id != older.edit_id and back.handle_id is None
    service.rollback(back.edit_id)
    assert service.list() == []
