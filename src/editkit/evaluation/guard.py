"""An opt-in guard against disabling edits (forgetting paper, §3.4.1: single edits whose weight change is
orders of magnitude above the others' and that break the model's downstream ability on their own).

The guard wraps any weight editor's ``apply``. After the edit is computed and applied, and before it is handed
back, it checks three things against the model as it was just before the edit:

* drift: the edit's own weight change (``||W_after - W_before||_2 / neurons`` summed over the changed
  parameters) must stay under ``drift_factor`` times the median of the edits accepted so far (once
  ``min_history`` have been accepted);
* canary tasks: the mean few-shot AUC on a few downstream examples (the same prompts as the evaluation's
  downstream tasks) must not fall by more than ``max_canary_drop``;
* earlier edits: the mean per-token log-probability of the targets of the last ``recall_edits`` accepted
  edits must not fall by more than ``max_recall_drop`` nats.

A failing edit is rolled back bit for bit and :class:`EditRejected` names every check it failed; the model is
as it was before. AUC and not F1 is read on the canaries because F1 follows a small model's label bias (see
``docs/benchmarks.md``, sequential editing).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import mean, median
from typing import Any

from editkit.editors.base import EditHandle, Editor
from editkit.edits import EditRequest
from editkit.errors import ConfigError, ValidationError
from editkit.evaluation.downstream import evaluate_task
from editkit.evaluation.drift import edit_drift
from editkit.models.lm import LanguageModel
from editkit.typedconfig import TypedConfig


class EditRejected(ValidationError):
    """The guard refused an edit; the model was left as it was. ``reasons`` lists the failed checks."""

    def __init__(self, reasons: list[str], checks: dict[str, Any]) -> None:
        super().__init__("edit rejected by the guard: " + "; ".join(reasons))
        self.reasons = reasons
        self.checks = checks


@dataclass
class GuardConfig(TypedConfig):
    drift_factor: float = field(
        default=10.0, metadata={"help": "reject an edit whose drift exceeds this many times the accepted median"}
    )
    min_history: int = field(default=5, metadata={"help": "accepted edits needed before the drift check applies"})
    max_canary_drop: float = field(
        default=0.15, metadata={"help": "largest fall of the canary tasks' mean AUC one edit may cause"}
    )
    max_recall_drop: float = field(
        default=2.0, metadata={"help": "largest fall (nats per token) of recent edits' target log-probability"}
    )
    recall_edits: int = field(default=20, metadata={"help": "how many recent accepted edits are re-checked"})

    def validate(self) -> None:
        if self.drift_factor <= 1 or self.min_history < 1 or self.recall_edits < 0:
            raise ConfigError("guard: drift_factor must exceed 1, min_history be >= 1 and recall_edits >= 0")
        if self.max_canary_drop <= 0 or self.max_recall_drop <= 0:
            raise ConfigError("guard: max_canary_drop and max_recall_drop must be positive")


def _record_fall(checks: dict[str, Any], name: str, before: float, after: float, limit: float) -> bool:
    """Write ``name`` and ``name_before`` into ``checks``; whether the score fell by more than ``limit``."""
    checks[name], checks[f"{name}_before"] = after, before
    return before - after > limit


@dataclass
class _Accepted:
    request: EditRequest
    drift: float


class EditGuard:
    """Checks each weight edit before it is kept. ``canary`` maps downstream task names to a few examples
    (e.g. 32 balanced SST-2 reviews, disjoint from any evaluation sample); without it only drift and earlier
    edits are checked. One guard follows one model through a sequence of edits."""

    def __init__(
        self,
        config: GuardConfig | None = None,
        *,
        canary: Mapping[str, Sequence[dict[str, Any]]] | None = None,
        batch_size: int = 16,
    ) -> None:
        self.config = config or GuardConfig()
        self.canary = {t: list(ex) for t, ex in (canary or {}).items()}
        self.batch_size = batch_size
        self.accepted: list[_Accepted] = []
        self.rejected = 0
        self.seconds = 0.0
        self._canary_now: float | None = None
        self._recall_now: float | None = None

    def resume(self, lm: LanguageModel, accepted: Sequence[tuple[EditRequest, float]]) -> None:
        """Take up a run that already holds these accepted edits ``(request, drift)``: their drifts become the
        history, and the canary and recall baselines are measured on ``lm`` as it is now."""
        self.accepted = [_Accepted(r, d) for r, d in accepted]
        self._canary_now = self._canary_score(lm)
        self._recall_now = self._recall_score(lm, self._recent())

    def apply(self, editor: Editor, lm: LanguageModel, requests: Sequence[EditRequest]) -> EditHandle:
        """``editor.apply(lm, requests)``, kept only if every check passes; else rolled back and
        :class:`EditRejected` raised."""
        if editor.capabilities.storage != "weights":
            raise ValidationError(f"the guard checks weight edits; {editor.name} keeps its edits outside the weights")
        t0 = time.perf_counter()
        recent = self._recent()
        if self._canary_now is None:
            self._canary_now = self._canary_score(lm)
        if self._recall_now is None:
            self._recall_now = self._recall_score(lm, recent)
        spent = time.perf_counter() - t0
        handle = editor.apply(lm, requests)
        t0 = time.perf_counter()
        drift = edit_drift(lm.model, handle) / len(requests)  # per edit, as the history holds it
        reasons, checks = self._check(lm, drift, recent)
        if reasons:
            handle.rollback()
            self.rejected += 1
            checks["seconds"] = spent + time.perf_counter() - t0
            self.seconds += checks["seconds"]
            raise EditRejected(reasons, checks)
        self.accepted += [_Accepted(r, drift) for r in requests]
        self._canary_now = checks.get("canary_auc", self._canary_now)
        self._recall_now = self._recall_score(lm, self._recent())
        checks["seconds"] = spent + time.perf_counter() - t0
        self.seconds += checks["seconds"]
        handle.info["guard"] = checks
        return handle

    def _check(self, lm: LanguageModel, drift: float, recent: list[EditRequest]) -> tuple[list[str], dict[str, Any]]:
        cfg = self.config
        reasons: list[str] = []
        checks: dict[str, Any] = {"drift": drift}
        if len(self.accepted) >= cfg.min_history:
            typical = median(a.drift for a in self.accepted)
            checks["drift_ratio"] = drift / typical if typical > 0 else float("inf")
            if checks["drift_ratio"] > cfg.drift_factor:
                reasons.append(
                    f"it moves the weights {checks['drift_ratio']:.0f}x as far as the median accepted edit "
                    f"(limit {cfg.drift_factor:g}x)"
                )
        if self.canary and self._canary_now is not None:
            auc = self._canary_score(lm)
            if auc is not None and _record_fall(checks, "canary_auc", self._canary_now, auc, cfg.max_canary_drop):
                reasons.append(
                    f"canary AUC on {', '.join(self.canary)} falls {self._canary_now:.2f} -> {auc:.2f} "
                    f"(limit: a fall of {cfg.max_canary_drop:g})"
                )
        if recent and self._recall_now is not None:
            recall = self._recall_score(lm, recent)
            limit = cfg.max_recall_drop
            if recall is not None and _record_fall(checks, "recall_logprob", self._recall_now, recall, limit):
                reasons.append(
                    f"the last {len(recent)} accepted edits' targets lose {self._recall_now - recall:.1f} nats per "
                    f"token (limit {limit:g})"
                )
        return reasons, checks

    def _recent(self) -> list[EditRequest]:
        n = self.config.recall_edits
        return [a.request for a in self.accepted[-n:]] if n else []

    def _canary_score(self, lm: LanguageModel) -> float | None:
        if not self.canary:
            return None
        aucs = [evaluate_task(lm, t, ex, batch_size=self.batch_size)["auc"] for t, ex in self.canary.items()]
        return mean(aucs)

    def _recall_score(self, lm: LanguageModel, requests: list[EditRequest]) -> float | None:
        if not requests:
            return None
        scores = lm.score([r.text for r in requests], [r.target_new for r in requests], batch_size=self.batch_size)
        return mean(float(s.mean()) for s in scores)

    def summary(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "canary_tasks": {t: len(ex) for t, ex in self.canary.items()},
            "accepted": len(self.accepted),
            "rejected": self.rejected,
            "seconds": self.seconds,
        }
