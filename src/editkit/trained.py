"""Trained artifacts: the one place that writes, finds, verifies and loads what ``editkit train NAME`` makes.

An artifact is a folder with ``manifest.json`` at its top and one sub-folder per trained part::

    manifest.json   format, config (the training settings), data (each training file's path, format, sha256
                    and case count), code_version, base_model, and parts: per part its training summary, the
                    sha256 of each of its files (``files``) and a hash over all of them (``fingerprint``)
    PART/           the part's files: safetensors weights (a peft adapter, a head, a vector) and part.json

Parts are trained one at a time and recorded as each finishes (:func:`record_part`), so an interrupted run keeps
the parts it finished. Editors read artifacts through :func:`find` (a user folder; the one packaged under
``editkit/artifacts/NAME`` when it was trained for the base model; else the user cache's
``$EDITKIT_CACHE/trained/NAME/MODEL``, trained there on first use by :func:`build_once` when the method's
trainer has a packaged recipe for that model: :func:`editkit.training.registry.first_use_training`),
:func:`verify` (a missing, corrupted or truncated file is refused naming the file; a part trained for another
base model is refused naming both models) and the loaders below, each of which verifies the part it reads again,
so no reader can use bytes the manifest does not vouch for. A truncated or garbled manifest is one error.
Results record each part's :func:`part_fingerprint`, so a number can be traced to the files that made it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

from editkit.errors import ValidationError
from editkit.files import atomic_save_tensors, atomic_write, file_sha256, read_json
from editkit.provenance import code_version

if TYPE_CHECKING:
    from torch import nn

    from editkit.data.formats import Dataset
    from editkit.models.encoder import SentenceEncoder
    from editkit.models.lm import LanguageModel

log = logging.getLogger(__name__)

PACKAGED = Path(__file__).resolve().parent / "artifacts"
MANIFEST = "manifest.json"
FORMAT = 1
# "0" (or off / false / no) turns training on first use off: an editor without parts then fails as it would without
# a recipe (CI, tests, machines that must not spend CPU unasked)
FIRST_USE_ENV = "EDITKIT_TRAIN_ON_FIRST_USE"
DEFER_PART = "counterfactual"  # the part whose deferral cut pack() records


# --------------------------------------------------------------------------- content hashes
def part_fingerprint(folder: Path) -> str:
    """sha256 (first 16 hex digits) over a trained part's files, names and contents."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by its path relative to the folder."""
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- writing
def start_manifest(
    folder: Path, config: Mapping[str, Any], datasets: Sequence[Dataset], base_model: str
) -> dict[str, Any]:
    """The manifest of a training run into ``folder``: the one there (its parts kept) updated with this run's
    config, data, code version and base model. Written once a part is recorded."""
    path = folder / MANIFEST
    manifest: dict[str, Any] = {}
    if path.exists():
        try:
            manifest = read_manifest(folder)
        except ValidationError as exc:  # its parts cannot be vouched for any more: start a new record
            log.warning("%s; writing a new manifest that records only the parts trained from now on", exc)
    manifest.update(
        {
            "format": FORMAT,
            "config": dict(config),
            "data": [
                {"path": str(d.path), "format": d.format, "sha256": d.sha256, "cases": len(d.cases)} for d in datasets
            ],
            "code_version": code_version(),
            "base_model": base_model,
        }
    )
    manifest.setdefault("parts", {})
    return manifest


def record_part(folder: Path, manifest: dict[str, Any], part: str, meta: Mapping[str, Any]) -> None:
    """Add a finished part (its files already under ``folder/part``) to the manifest, with its files' hashes,
    and write the manifest whole."""
    part_folder = folder / part
    manifest["parts"][part] = {
        **meta,
        "files": file_hashes(part_folder),
        "fingerprint": part_fingerprint(part_folder),
    }
    atomic_write(folder / MANIFEST, json.dumps(manifest, indent=2))


def save_part(
    folder: Path,
    meta: Mapping[str, Any],
    *,
    adapter: nn.Module | None = None,
    tensors: Mapping[str, torch.Tensor] | None = None,
    tensors_file: str = "weights.safetensors",
) -> None:
    """Write one part's files: a peft adapter (``adapter/``), tensors (safetensors) and ``part.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    if adapter is not None:
        # LoRA leaves the embeddings alone; "auto" would ask the hub whether the vocabulary changed
        adapter.save_pretrained(str(folder / "adapter"), save_embedding_layers=False)  # type: ignore[operator]
    if tensors is not None:
        atomic_save_tensors(tensors, folder / tensors_file)
    atomic_write(folder / "part.json", json.dumps(dict(meta), indent=2))


def write_part(
    folder: Path,
    config: Mapping[str, Any],
    datasets: Sequence[Dataset],
    base_model: str,
    part: str,
    meta: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
) -> dict[str, Any]:
    """A trainer of one tensor part finishes: the manifest (:func:`start_manifest`), the part's tensors and
    ``part.json`` (:func:`save_part`), the part recorded (:func:`record_part`). Returns the manifest."""
    manifest = start_manifest(folder, config, datasets, base_model)
    save_part(folder / part, meta, tensors=tensors)
    record_part(folder, manifest, part, meta)
    return manifest


INT8_SCALE = "::int8_scale"  # a tensor stored as int8 rows has its rows' float32 scales under NAME + this
INT8_MIN_SIZE = 4096  # smaller floating tensors (biases, norms) are kept in float16 by an int8 pack


def quantize_int8(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors of at least two dimensions and ``INT8_MIN_SIZE`` elements as int8 with one float32 scale
    per row (symmetric, round to nearest: each value within half a step of ``max |row| / 127``); other floating
    tensors in float16; the rest as they are. :func:`dequantize_int8` reads them back."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name.endswith(INT8_SCALE):
            raise ValidationError(f"tensor name {name!r} ends with {INT8_SCALE!r}, which int8 packing reserves")
        if t.is_floating_point() and t.dim() >= 2 and t.numel() >= INT8_MIN_SIZE:
            rows = t.detach().float().reshape(t.shape[0], -1)
            scale = rows.abs().amax(1).clamp_min(torch.finfo(torch.float32).tiny) / 127
            out[name] = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(t.shape)
            out[name + INT8_SCALE] = scale
        else:
            out[name] = t.half() if t.is_floating_point() else t
    return out


def dequantize_int8(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors stored by :func:`quantize_int8` as float32 (int8 rows times their scales); tensors without a scale
    beside them are returned as stored."""
    out = {}
    for name, t in tensors.items():
        if name.endswith(INT8_SCALE):
            continue
        scale = tensors.get(name + INT8_SCALE)
        out[name] = t if scale is None else (t.float().reshape(t.shape[0], -1) * scale[:, None]).reshape(t.shape)
    return out


def pack(
    source: Path,
    dest: Path,
    *,
    half: bool = False,
    int8: bool = False,
    parts_from: Mapping[str, Path] | None = None,
    defer: Path | None = None,
) -> dict[str, Any]:
    """Copy the verified artifact ``source`` to ``dest`` for shipping: every recorded part, no checkpoints, and
    with ``half`` each safetensors file's floating tensors in float16, with ``int8`` its large matrices in int8
    rows (:func:`quantize_int8`; a quarter of float32's size, dequantized to float32 by :func:`load_tensors`;
    a peft adapter's files in float16). The editors load them into their own dtype. ``parts_from`` takes some
    parts from other artifacts instead (part -> its folder: a newly trained scope classifier beside the
    counterfactual model already shipped). ``defer`` is a deferral calibration of the counterfactual part
    (``benchmarks/serac_defer_calibration.py``'s JSON, made on exactly that part's weights): its cut is recorded
    with the part (:func:`defer_record`), and SERAC's ``defer_judge`` reads it when no ``defer_kl`` is given.
    Each part is recorded anew (its files' hashes, its fingerprint, ``packed_from``: the source part's
    fingerprint); ``dest`` must not hold an artifact yet. Returns the new manifest."""
    if half and int8:
        raise ValidationError("pack takes float16 or int8, not both")
    manifest = read_manifest(source)
    origins = {part: source for part in manifest.get("parts", {})}
    origins.update(parts_from or {})
    if not origins:
        raise ValidationError(f"{source / MANIFEST} records no trained part; nothing to pack")
    manifests = {folder: read_manifest(folder) for folder in set(origins.values())}
    for folder in manifests:
        verify(folder, [p for p, f in origins.items() if f == folder])
    judged = None
    if defer is not None:
        if DEFER_PART not in origins:
            raise ValidationError(f"--defer calibrates a {DEFER_PART} part; {source} has none to pack")
        judged = defer_record(defer, manifests[origins[DEFER_PART]]["parts"][DEFER_PART]["fingerprint"])
    if (dest / MANIFEST).exists():
        raise ValidationError(f"{dest} already holds a trained artifact; remove it or pack elsewhere")
    packed = {**manifest, "parts": {}}
    for part, folder in origins.items():
        recorded = manifests[folder]["parts"][part]
        meta = {k: v for k, v in recorded.items() if k not in ("files", "fingerprint")}
        meta["packed_from"] = recorded["fingerprint"]
        if folder != source:
            meta["base_model"] = recorded.get("base_model", manifests[folder].get("base_model"))
        for rel in recorded["files"]:
            src, out = folder / part / rel, dest / part / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if (half or int8) and rel.endswith(".safetensors"):
                tensors = load_file(str(src))
                if int8 and not rel.startswith("adapter/"):  # peft reads adapters itself: those go in float16
                    tensors = quantize_int8(tensors)
                else:
                    tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
                atomic_save_tensors(tensors, out)
            else:
                atomic_write(out, src.read_bytes())
        if half or int8:
            meta["dtype"] = "int8" if int8 else "float16"
        if part == DEFER_PART:
            meta.pop("defer", None)  # a cut calibrated on the source's weights is carried only when given again
            if judged is not None:
                meta["defer"] = judged
        record_part(dest, packed, part, meta)
    return packed


def defer_record(calibration: Path, fingerprint: str) -> dict[str, Any]:
    """What :func:`pack` records of a deferral calibration (``benchmarks/serac_defer_calibration.py``'s JSON):
    the suggested cut, whether it is against the edit's twin (``defer_contrast``), the share of in-scope inputs (or
    of rephrasings: ``keep_kind``) it keeps, the share of each kind of input it sends back, and the file's sha256.
    It must have been made on the part with ``fingerprint``."""
    data = read_json(calibration, "deferral calibration")
    try:
        cut, contrast, keep = float(data["suggested_defer_kl"]), data["contrast"], float(data["keep"])
        made_on = data["counterfactual"]
    except (TypeError, KeyError, ValueError):
        raise ValidationError(
            f"{calibration} is not a deferral calibration (serac_defer_calibration.py's JSON: suggested_defer_kl, "
            "contrast, keep, counterfactual)"
        ) from None
    if not isinstance(contrast, bool) or not cut > 0:
        raise ValidationError(f"{calibration}: contrast must be true or false and suggested_defer_kl above 0")
    if made_on != fingerprint:
        raise ValidationError(
            f"{calibration} was made on the counterfactual part {made_on}, not on this one ({fingerprint}); "
            "calibrate this part"
        )
    return {
        "defer_kl": cut,
        "defer_contrast": contrast,
        "keep": keep,
        "keep_kind": str(data.get("keep_kind", "in_scope")),
        "deferred_at_cut": data.get("deferred_at_suggested", {}),
        "calibration_sha256": file_sha256(calibration),
    }


def recorded_defer(folder: Path) -> dict[str, Any] | None:
    """The deferral cut recorded with the counterfactual part of the artifact in ``folder`` (:func:`pack`'s
    ``defer``), or ``None``."""
    record = read_manifest(folder).get("parts", {}).get(DEFER_PART, {}).get("defer")
    return record if isinstance(record, dict) else None


# --------------------------------------------------------------------------- finding and verifying
def find(name: str, path: str | None, alternative: str = "", *, model: str | None = None) -> Path:
    """The artifact folder of trainer ``name``: ``path`` if given (``{model}`` in it replaced by ``model``, so one
    setting can name a folder per base model; a bare name that is no folder here names a set packaged with
    editkit, ``editkit/artifacts/NAME``); else, without ``model`` or when the packaged artifact was trained
    for ``model``, the one packaged with editkit; else the user cache's parts for ``model``
    (:func:`user_folder`), trained there first when the trainer has a packaged recipe for ``model`` and first-use
    training is on (:data:`FIRST_USE_ENV`), and verified whole; else the packaged one (whose verification then
    names both models). ``alternative`` ends the error's advice (another way to go on without trained parts)."""
    if path and model is not None:
        path = path.replace("{model}", model)
    packaged = PACKAGED / name
    if not path and model is not None and not _packaged_for(packaged, model):
        cached = _cached(name, model)
        if cached is not None:
            return cached
    folder = Path(path).expanduser() if path else packaged
    if path and "/" not in path and not folder.exists() and (PACKAGED / path / MANIFEST).is_file():
        folder = PACKAGED / path  # a set packaged with editkit, named by its folder (serac-hard)
    if not (folder / MANIFEST).is_file():
        raise ValidationError(
            f"no trained {name.upper()} parts in {folder} ({MANIFEST} missing); train them with "
            f"`editkit train {name} --config FILE` and pass artifacts=FOLDER{alternative}"
        )
    return folder


def _packaged_for(folder: Path, model: str) -> bool:
    """Whether the packaged artifact ``folder`` exists and its parts were trained for ``model``."""
    if not (folder / MANIFEST).is_file():
        return False
    manifest = read_manifest(folder)
    parts = manifest.get("parts", {}).values()
    return bool(parts) and all(meta.get("base_model", manifest.get("base_model")) == model for meta in parts)


def user_folder(name: str, model: str) -> Path:
    """Where parts of trainer ``name`` for ``model`` trained on first use live: ``$EDITKIT_CACHE/trained/NAME/MODEL``
    (the model cache's root, :func:`editkit.models.zoo.cache_dir`)."""
    from editkit.models.zoo import cache_dir

    return cache_dir() / "trained" / name / model.replace("/", "--")


def first_use_enabled() -> bool:
    """Whether an editor may train missing parts on first use (:data:`FIRST_USE_ENV`, on unless set to 0)."""
    return os.environ.get(FIRST_USE_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def _cached(name: str, model: str) -> Path | None:
    """The user cache's verified parts of ``name`` for ``model``, trained now if missing and a recipe allows;
    ``None`` when there are none. A cached artifact that fails verification is refused, never used or replaced
    silently: the error says to remove it (the next use trains it again)."""
    folder = user_folder(name, model)
    if not (folder / MANIFEST).is_file() and first_use_enabled():
        from editkit.training.registry import first_use_training

        train = first_use_training(name, model, folder)
        if train is not None:
            build_once(folder, train)
    if not (folder / MANIFEST).is_file():
        return None
    try:
        verify(folder, list(read_manifest(folder).get("parts", {})), base_model=model)
    except ValidationError as exc:
        raise ValidationError(f"{exc} (cached parts: remove {folder} and the next use trains them again)") from None
    return folder


@contextmanager
def _exclusive(lock: Path, what: str) -> Iterator[None]:
    """Hold ``lock`` (``flock``) exclusively, waiting for another process that holds it (said once, in the log)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another editkit process is making %s (lock %s); waiting for it", what, lock)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(folder: Path, train: Callable[[Path], object]) -> None:
    """Make the artifact ``folder`` whole, once across processes. Under ``NAME.lock`` beside it (a second process
    waits, then finds it made), ``train(staging)`` trains into ``.NAME.training`` (its checkpoints stay there, so
    a killed run resumes), the verified parts are copied without checkpoints into ``.NAME.new`` (:func:`pack`),
    which is renamed to ``folder`` (atomic: ``folder`` is absent or complete); only then is the staging folder
    removed. A crash at any point leaves no ``folder`` to trust."""
    staging = folder.parent / f".{folder.name}.training"
    fresh = folder.parent / f".{folder.name}.new"
    with _exclusive(folder.parent / f"{folder.name}.lock", str(folder)):
        if (folder / MANIFEST).is_file():
            return
        train(staging)
        shutil.rmtree(fresh, ignore_errors=True)
        pack(staging, fresh)
        if folder.exists():  # a folder without a manifest holds nothing verified: left by hand, or a copy cut short
            shutil.rmtree(folder)
        fresh.rename(folder)
        shutil.rmtree(staging)


def read_manifest(folder: Path) -> dict[str, Any]:
    """The artifact's manifest; an unreadable one is a one-line error naming it."""
    path = folder / MANIFEST
    try:
        manifest = read_json(path, "manifest")
    except ValidationError as exc:
        raise ValidationError(f"{exc}; retrain the artifact") from None
    parts = manifest.get("parts", {}) if isinstance(manifest, dict) else None
    if not isinstance(parts, dict) or not all(
        isinstance(meta, dict) and isinstance(meta.get("files", {}), dict) for meta in parts.values()
    ):
        raise ValidationError(f"{path} is not a manifest editkit wrote (a JSON object of parts); retrain the artifact")
    return manifest


def verify(folder: Path, parts: Sequence[str], base_model: str | None = None) -> dict[str, Any]:
    """Check ``parts`` of the artifact in ``folder`` against its manifest and return the manifest: each part is
    recorded, each recorded file is there with its recorded content, no file was added, and (given
    ``base_model``) the part was trained for that model."""
    manifest = read_manifest(folder)
    recorded = manifest.get("parts", {})
    for part in parts:
        meta = recorded.get(part)
        if meta is None or "files" not in meta:
            raise ValidationError(f"{folder / MANIFEST} records no trained part {part!r}; train it or pass its folder")
        trained_for = meta.get("base_model", manifest.get("base_model"))
        if base_model is not None and trained_for != base_model:
            raise ValidationError(
                f"{folder / part} was trained for {trained_for}, not {base_model}; train it for {base_model}"
            )
        for rel, sha in meta["files"].items():
            path = folder / part / rel
            if not path.is_file():
                raise ValidationError(f"{path} is missing from the trained artifact {folder}")
            if file_sha256(path) != sha:
                raise ValidationError(f"{path} does not match its recorded hash (corrupted or truncated); retrain it")
        extra = sorted(set(file_hashes(folder / part)) - set(meta["files"]))
        if extra:
            raise ValidationError(f"{folder / part / extra[0]} is not part of the trained artifact; remove it")
        if part_fingerprint(folder / part) != meta["fingerprint"]:
            raise ValidationError(f"{folder / part} does not match its recorded fingerprint; retrain it")
    return manifest


# --------------------------------------------------------------------------- loading
def _verified(part_folder: Path) -> None:
    """Every loader reads a part only after checking it against the manifest of the artifact above it."""
    verify(part_folder.parent, [part_folder.name])


def load_tensors(folder: Path, name: str = "weights.safetensors") -> dict[str, torch.Tensor]:
    """The tensors of trained part ``folder`` (verified first; an int8 pack's read back as float32)."""
    path = folder / name
    if not path.is_file():
        raise ValidationError(f"{folder} holds no trained tensors ({name} is missing)")
    _verified(folder)
    return dequantize_int8(load_file(str(path)))


def load_adapter_encoder(folder: Path, encoder_name: str) -> tuple[SentenceEncoder, str]:
    """The base encoder with the part's LoRA adapter merged in, and a hash naming the adapter."""
    from peft import PeftModel

    from editkit.models.encoder import SentenceEncoder

    weights = folder / "adapter" / "adapter_model.safetensors"
    if not weights.is_file():
        raise ValidationError(f"{folder} holds no trained adapter ({weights} is missing)")
    _verified(folder)
    base = SentenceEncoder.load(encoder_name)
    merged = PeftModel.from_pretrained(base.model, str(folder / "adapter")).merge_and_unload()
    return SentenceEncoder(merged.eval(), base.tokenizer, name=f"{encoder_name}+{folder.name}"), file_sha256(weights)


def load_adapter_lm(folder: Path, suffix: str) -> LanguageModel:
    """A language model trained as a LoRA adapter: its base LM (a zoo name or folder, ``base_model`` in
    ``part.json``) with the adapter merged into a private copy of the weights, named ``BASE+suffix``."""
    from peft import PeftModel

    from editkit.models.lm import LanguageModel
    from editkit.models.zoo import load

    meta_path = folder / "part.json"
    if not meta_path.is_file():
        raise ValidationError(f"{folder} holds no trained model (part.json missing)")
    _verified(folder)
    meta = read_json(meta_path, "trained part")
    lm = load(meta["base_model"], progress=False)
    merged = PeftModel.from_pretrained(lm.model, str(folder / "adapter")).merge_and_unload()
    return LanguageModel(merged.eval(), lm.tokenizer, name=f"{lm.name}+{suffix}", prefix=lm.prefix)
