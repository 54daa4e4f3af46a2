"""A sequential run's state folder, which lets a run survive being stopped:

* ``results.json``: the partial results, written last after every step, naming the state to read;
* ``weights-n.safetensors`` / ``weights-n.json``: after edit n, the current value of every parameter the run
  changed, with each original's sha256; ``editor-n.safetensors``: what the editor remembers of its edits
  (:meth:`Editor.export_state`), if anything;
* ``unedited.json``: the unedited model's scores of every case, with what they were computed on (model
  fingerprint, data, cases), so neither a resumed run nor another method's run given a copy recomputes them;
* ``lock``: held (``flock``) while a run uses the folder.

A folder holding ``results.json`` alone (committed results on another machine) is rebuilt by replaying the
records (:func:`~editkit.evaluation.replay.replay_records`). The run key (:func:`run_key`) says which run a
folder holds; a rerun whose cases begin with the saved run's :func:`extends` it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from editkit.editors.base import Editor
from editkit.edits import EditCase
from editkit.errors import ValidationError
from editkit.evaluation.drift import DriftTracker
from editkit.evaluation.metrics import Reference, score_cases
from editkit.evaluation.replay import replay_records
from editkit.evaluation.results import Header, load_results, saved_state_files, state_files
from editkit.files import atomic_save_tensors, atomic_write, read_json, tensor_sha256
from editkit.models.lm import LanguageModel

log = logging.getLogger(__name__)


class RunState:
    """A sequential run's state folder (see the module docstring). The tensors are written before
    ``results.json``, which is written last and says which n to read, so a run killed at any moment leaves a
    complete state: the previous step's or the new one. Older files are removed once the new results are
    written."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.results = folder / "results.json"
        self.unedited = folder / "unedited.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock file for the run: a second process on the same folder (a rerun while the first
        still runs) would interleave its saves with the first's."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValidationError(f"{self.folder} is in use by another running editkit process") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def saved_results(self) -> dict[str, Any] | None:
        """The partial results of the run the folder holds, or ``None`` for a new folder."""
        return load_results(self.results) if self.results.exists() else None

    def save(self, results: dict[str, Any], lm: LanguageModel, drift: DriftTracker, editor: Editor) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        weights, remembered_file, meta_file = state_files(self.folder, results["n_edits"])
        params = dict(lm.model.named_parameters())
        if drift.originals:
            atomic_save_tensors({n: params[n] for n in drift.originals}, weights)
        remembered = editor.export_state(lm)
        if remembered:
            atomic_save_tensors(remembered, remembered_file)
        meta = {
            "original_sha256": {n: tensor_sha256(t) for n, t in drift.originals.items()},
            "editor_state": sorted(remembered),
            "n_edits": results["n_edits"],
        }
        atomic_write(meta_file, json.dumps(meta))
        atomic_write(self.results, json.dumps(results))
        current = {weights, remembered_file, meta_file}
        for pattern in ("weights*.safetensors", "editor*.safetensors", "weights*.json"):
            for old in self.folder.glob(pattern):
                if old not in current:
                    old.unlink()

    @torch.no_grad()
    def restore(
        self,
        lm: LanguageModel,
        drift: DriftTracker,
        editor: Editor,
        cases: Sequence[EditCase],
        *,
        environment: dict[str, Any],
        progress: bool,
    ) -> dict[str, Any]:
        """The saved results, with ``lm`` (and ``editor``) brought to their state: from the saved weights, else by
        replaying the records. The results list every resume under ``resumes``, with the ``environment`` the run
        goes on in (another CPU or thread count changes the last bits of its arithmetic) and, for a replay, how
        far the replayed edits' drift came from the recorded one."""
        results = load_results(self.results)
        weights, remembered_file, meta_file = saved_state_files(self.folder, results["n_edits"])
        if not meta_file.exists():  # results alone (copied from another machine): rebuild the weights
            deviation = replay_records(results, lm, editor, cases, drift=drift, progress=progress)
            resumed = {"n_edits": results["n_edits"], "from": "records", "largest_relative_deviation": deviation}
            results["resumes"] = [*results.get("resumes", []), {**resumed, "environment": environment}]
            return results
        meta = read_json(meta_file, "saved run state")
        if not isinstance(meta, dict) or not isinstance(meta.get("original_sha256"), dict):
            raise ValidationError(f"{meta_file} is not the run state editkit wrote; start afresh")
        if meta.get("n_edits") != results["n_edits"]:
            raise ValidationError(f"{self.folder}: weights and results were saved at different edits; start afresh")
        if "editor_state" not in meta and type(editor).export_state is not Editor.export_state:
            raise ValidationError(
                f"{self.folder} was saved by an editkit that did not keep what {editor.name} remembers of its "
                "edits; resumed, its next edits would ignore the earlier ones: start afresh"
            )
        params = dict(lm.model.named_parameters())
        try:
            saved = load_file(str(weights)) if meta["original_sha256"] else {}
            remembered = load_file(str(remembered_file)) if meta.get("editor_state") else {}
        except Exception as exc:  # safetensors reports a truncated or garbled file as its own SafetensorError
            raise ValidationError(f"{self.folder}: saved weights are damaged ({exc}); start afresh") from None
        missing = sorted(set(meta["original_sha256"]) - set(saved))
        if missing:
            raise ValidationError(f"{self.folder}: saved weights lack {missing[0]}; start afresh")
        for name, sha in meta["original_sha256"].items():
            if name not in params or tensor_sha256(params[name]) != sha:
                raise ValidationError(f"{self.folder}: saved state was made from another base model ({name})")
            drift.originals[name] = params[name].detach().cpu().clone()
            params[name].copy_(saved[name].to(params[name].device))
        if remembered:
            editor.import_state(lm, remembered)
        resumed = {"n_edits": results["n_edits"], "from": "weights", "environment": environment}
        results["resumes"] = [*results.get("resumes", []), resumed]
        return results

    def keep_unedited(self, lm: LanguageModel, header: Header, scores: list[dict[str, float]]) -> None:
        """Write ``unedited.json``: ``scores`` of the unedited ``lm`` (as it is now), with what they were made on."""
        atomic_write(self.unedited, json.dumps({**made_on(lm, header), "scores": scores}))


def unedited_scores(
    state: RunState | None,
    lm: LanguageModel,
    cases: Sequence[EditCase],
    reference: Reference,
    header: Header,
    *,
    batch_size: int,
    progress: bool,
) -> list[dict[str, float]]:
    """The unedited model's scores of every case, kept in the state folder's ``unedited.json`` with what they
    were computed on (model, data, cases): a run stopped before its first edit, or a run of another method on
    the same cases given a copy of the file, does not recompute them (15 minutes for 1,000 CounterFact cases)."""
    if state is not None and state.unedited.exists():
        try:
            saved = read_json(state.unedited, "unedited scores")
        except ValidationError as exc:  # a cache: recompute it
            log.warning("%s; computing them again", exc)
            saved = {}
        wanted = made_on(lm, header)
        if isinstance(saved, dict) and {k: saved.get(k) for k in wanted} == wanted:
            scores: list[dict[str, float]] = saved["scores"]
            return scores
    scores = score_cases(lm, cases, reference, batch_size=batch_size, progress=progress)
    if state is not None:
        state.keep_unedited(lm, header, scores)
    return scores


def made_on(lm: LanguageModel, header: Header) -> dict[str, Any]:
    """What unedited scores were computed on: the model's fingerprint, the data and the cases."""
    return {"model": lm.fingerprint(), "data": [d["sha256"] for d in header["data"]], "case_ids": header["case_ids"]}


def run_key(header: Header, settings: dict[str, Any]) -> dict[str, Any]:
    """What makes two sequential runs the same run: model, method, config, data, cases and the run's settings."""
    return {
        "model": header["model"],
        "method": header["method"],
        "config": header["config"],
        "case_ids": header["case_ids"],
        "data": [d["sha256"] for d in header["data"]],
        **settings,
    }


def with_new_defaults(saved: dict[str, Any] | None, key: dict[str, Any], defaults: Mapping[str, Any]) -> Any:
    """The saved run key with the method settings that ``key`` has and it lacks filled in, where ``key`` holds
    them at their ``defaults``: a setting the code gained after the run began, left at its default, does not make
    a resumed run another run (one set otherwise still does)."""
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        return saved
    config = dict(saved["config"])
    for name, value in key["config"].items():
        if name not in config and name in defaults and defaults[name] == value:
            config[name] = value
    return {**saved, "config": config}


def extends(saved: dict[str, Any] | None, key: dict[str, Any]) -> bool:
    """Whether ``key`` is the saved run's key with more cases appended (same data, model, method, settings)."""
    if saved is None or saved.keys() != key.keys():
        return False
    ids, more = saved["case_ids"], key["case_ids"]
    same = all(saved[k] == key[k] for k in key if k != "case_ids")
    return same and len(more) > len(ids) and more[: len(ids)] == ids
