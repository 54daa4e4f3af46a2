"""Causal tracing averaged over known facts (ROME's Figure 2 in kind): the average indirect effect, at the
subject's last token, of each layer's residual stream, MLP and attention.

Facts come from ROME's ``known_1000.json`` (``prompt``, ``subject``, ``attribute``). A fact counts as known to
*this* model when its greedy next token after the prompt is the attribute's first token; the others are skipped
and counted. Each traced fact is appended to a JSON-lines state file (one line, flushed, per fact) under
``$EDITKIT_CACHE/trace/``, named by a hash of the model's fingerprint, the trace config and the facts file's
sha256, so an interrupted run resumes where it stopped and a longer run extends a shorter one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from editkit.errors import ValidationError
from editkit.files import read_json
from editkit.locating.trace import TraceConfig, Tracer, embedding_std
from editkit.models.lm import LanguageModel


@dataclass(frozen=True)
class KnownFact:
    known_id: int
    prompt: str
    subject: str
    attribute: str


def load_known(path: str | Path) -> list[KnownFact]:
    """ROME's known facts (a JSON list of records with ``prompt``, ``subject`` and ``attribute``)."""
    p = Path(path)
    data = read_json(p, "known-facts file")
    try:
        return [
            KnownFact(int(r.get("known_id", i)), r["prompt"], r["subject"], r["attribute"]) for i, r in enumerate(data)
        ]
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValidationError(f"{p} is not a list of known facts (prompt, subject, attribute): {exc}") from None


def state_path(lm: LanguageModel, config: TraceConfig, facts_sha: str, cache: Path) -> Path:
    settings = {k: v for k, v in config.to_dict().items() if k != "prefix_cache"}  # a speed-up: the same traces
    key = json.dumps([lm.fingerprint(), settings, facts_sha], sort_keys=True)
    return cache / "trace" / f"{lm.name.replace('/', '_')}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"


def _read_state(path: Path) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that fact is traced again
            done[int(rec["known_id"])] = rec
    return done


def traced_facts(
    lm: LanguageModel, facts: list[KnownFact], config: TraceConfig, state: Path, limit: int, progress: Any
) -> Iterator[dict[str, Any]]:
    """Trace the subject's last token of the first ``limit`` facts (known or not), appending each to ``state``;
    facts already there are read back. Yields one record per fact (``known: false`` for a fact the model does
    not know)."""
    done = _read_state(state)
    state.parent.mkdir(parents=True, exist_ok=True)
    std = embedding_std(lm)
    with state.open("a") as out:
        for fact in facts[:limit]:
            rec = done.get(fact.known_id)
            if rec is None:
                rec = _trace_fact(lm, fact, config, std)
                out.write(json.dumps(rec) + "\n")
                out.flush()
            progress.advance()
            yield rec


def _trace_fact(lm: LanguageModel, fact: KnownFact, config: TraceConfig, std: float) -> dict[str, Any]:
    answer_ids = lm.encode(" " + fact.attribute.strip(), special=False)
    with torch.no_grad():
        greedy = int(lm.next_token_logprobs([fact.prompt])[0].argmax())
    rec: dict[str, Any] = {"known_id": fact.known_id, "known": bool(answer_ids) and greedy == answer_ids[0]}
    if not rec["known"]:
        return rec
    start = time.perf_counter()
    tracer = Tracer(lm, fact.prompt, fact.subject, config, answer=" " + fact.attribute.strip(), noise_std=std)
    result = tracer.trace(tokens=[tracer.s1 - 1])
    rec.update(
        p_clean=result.p_clean,
        p_corrupted=result.p_corrupted,
        last_subject={k: result.scores[k][tracer.s1 - 1] for k in config.kinds},
        n_tokens=len(tracer.ids),
        seconds=time.perf_counter() - start,
    )
    return rec


def average_effects(records: list[dict[str, Any]], kinds: list[str]) -> dict[str, Any]:
    """Mean indirect effect by layer at the subject's last token per kind, over the known facts among
    ``records``, with the layer of each kind's peak."""
    known = [r for r in records if r["known"]]
    out: dict[str, Any] = {"facts": len(records), "known": len(known), "kinds": {}}
    if not known:
        return out
    for kind in kinds:
        effects = torch.tensor([[v - r["p_corrupted"] for v in r["last_subject"][kind]] for r in known])
        mean = effects.mean(0)
        out["kinds"][kind] = {
            "mean_effect": mean.tolist(),
            "stderr": (effects.std(0) / len(known) ** 0.5).tolist() if len(known) > 1 else None,
            "peak_layer": int(mean.argmax()),
        }
    out["mean_p_clean"] = sum(r["p_clean"] for r in known) / len(known)
    out["mean_p_corrupted"] = sum(r["p_corrupted"] for r in known) / len(known)
    out["median_seconds_per_fact"] = sorted(r["seconds"] for r in known)[len(known) // 2]
    return out


__all__ = ["KnownFact", "average_effects", "load_known", "state_path", "traced_facts"]
