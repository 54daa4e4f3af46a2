"""Trained artifacts: the one place that writes, finds, verifies and loads what ``editkit train NAME`` makes.

An artifact is a folder with ``manifest.json`` at its top and one sub-folder per trained part::

    manifest.json   format, config (the training settings), data (each training file's path, format, sha256
                    and case count), code_version, base_model, and parts: per part its training summary, the
                    sha256 of each of its files (``files``) and a hash over all of them (``fingerprint``)
    PART/           the part's files: safetensors weights (a peft adapter, a head, a vector) and part.json

Parts are trained one at a time and recorded as each finishes (:func:`record_part`), so an interrupted run keeps
the parts it finished. Editors read artifacts through :func:`find` (a user folder, or the one packaged under
``editkit/artifacts/NAME``), :func:`verify` (a missing, corrupted or truncated file is refused naming the file;
a part trained for another base model is refused naming both models) and the loaders below, each of which
verifies the part it reads again, so no reader can use bytes the manifest does not vouch for. A truncated or
garbled manifest is one error. Results record each part's :func:`part_fingerprint`, so a number can be traced to
the files that made it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
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


def pack(
    source: Path, dest: Path, *, half: bool = False, parts_from: Mapping[str, Path] | None = None
) -> dict[str, Any]:
    """Copy the verified artifact ``source`` to ``dest`` for shipping: every recorded part, no checkpoints, and
    with ``half`` each safetensors file's floating tensors in float16 (the editors load them into their own
    dtype). ``parts_from`` takes some parts from other artifacts instead (part -> its folder: a newly trained
    scope classifier beside the counterfactual model already shipped). Each part is recorded anew (its files'
    hashes, its fingerprint, ``packed_from``: the source part's fingerprint); ``dest`` must not hold an artifact
    yet. Returns the new manifest."""
    manifest = read_manifest(source)
    origins = {part: source for part in manifest.get("parts", {})}
    origins.update(parts_from or {})
    if not origins:
        raise ValidationError(f"{source / MANIFEST} records no trained part; nothing to pack")
    manifests = {folder: read_manifest(folder) for folder in set(origins.values())}
    for folder in manifests:
        verify(folder, [p for p, f in origins.items() if f == folder])
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
            if half and rel.endswith(".safetensors"):
                tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(src)).items()}
                atomic_save_tensors(tensors, out)
            else:
                atomic_write(out, src.read_bytes())
        if half:
            meta["dtype"] = "float16"
        record_part(dest, packed, part, meta)
    return packed


# --------------------------------------------------------------------------- finding and verifying
def find(name: str, path: str | None, alternative: str = "", *, model: str | None = None) -> Path:
    """The artifact folder of trainer ``name``: ``path`` if given (``{model}`` in it replaced by ``model``, so one
    setting can name a folder per base model), else the one packaged with editkit. ``alternative`` ends the
    error's advice (another way to go on without trained parts)."""
    if path and model is not None:
        path = path.replace("{model}", model)
    folder = Path(path).expanduser() if path else PACKAGED / name
    if not (folder / MANIFEST).is_file():
        raise ValidationError(
            f"no trained {name.upper()} parts in {folder} ({MANIFEST} missing); train them with "
            f"`editkit train {name} --config FILE` and pass artifacts=FOLDER{alternative}"
        )
    return folder


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
    """The tensors of trained part ``folder`` (verified first)."""
    path = folder / name
    if not path.is_file():
        raise ValidationError(f"{folder} holds no trained tensors ({name} is missing)")
    _verified(folder)
    return load_file(str(path))


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
