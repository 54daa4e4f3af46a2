"""SERAC (Mitchell et al. 2022, "Memory-Based Model Editing at Scale") and its RP ablation.

SERAC wraps a frozen base model with an edit memory, a scope classifier g and a counterfactual model h
(§3.1, eq. 1): for an input x, i* = argmax_i g(z_i, x) over the stored edits; if g(z_i*, x) >= 0.5, h answers
from ``[z_i* ; x]``, else the base model answers. The base model is never changed.

* Scope classifier (:mod:`editkit.editors.scope`): ``embed`` (MiniLM bi-encoder, negative squared distance)
  or ``cross`` (MiniLM cross-encoder over the nearest ``candidates`` edits), both trained with eq. 2;
  ``embed-untrained`` is raw MiniLM with a fixed threshold, for comparison.
* Counterfactual model: SmolLM2-135M with a LoRA adapter trained with eq. 3 on ``template`` prompts
  (:mod:`editkit.training.serac`), merged into its own copy of the weights when loaded. It serves base models
  of other families too, through a :class:`~editkit.models.bridge.TokenBridge` (the parts are not retrained).

RP (retrieve-and-prompt, §5 and appendix B) uses the same scope classifier but lets the base model answer,
with the retrieved edit in its prompt; it is also SERAC with an untrained, in-context counterfactual model.

Both take statements (``EditRequest.statement("Boris Johnson is the UK PM.")``, SERAC §2's descriptors that are
not input-output pairs): the statement is z_e for the scope classifier and in h's prompt (``template``). The
packaged parts were trained on ``[x_e ; y_e]`` descriptors only, so they read statements as well as that
training carries over (docs/benchmarks.md, "ConvSent in kind").

``defer_judge`` names a second folder of parts whose counterfactual model decides the deferral
(:class:`~editkit.editors.memory.RoutedModel`): one trained to answer untouched facts as the base model does
judges, the configured one answers. Its cut is ``defer_kl``, or when that is not given the one recorded with the
judge (``editkit pack --defer``: a calibration on edits it never saw, for the shipped ``serac-keep``).

Trained parts are read from ``artifacts`` (a folder written by ``editkit train serac``); by default from the
folder shipped in the package, ``editkit/artifacts/serac``. ``artifacts=serac-hard`` reads the second set shipped,
``editkit/artifacts/serac-hard``: parts trained on question / answer edits, true / false questions about them,
fact-checking claims under evidence statements and statements (``benchmarks/configs/train_serac_hard.yaml``).
Each part is verified against its folder's manifest before it loads (:mod:`editkit.trained`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from editkit.editors.answerers import Answerer, PromptedAnswerer, template_prompt
from editkit.editors.base import Capabilities, EditorConfig, register
from editkit.editors.memory import MemoryConfig, MemoryEditor, ScopeModel
from editkit.editors.scope import CrossScope, EmbedScope
from editkit.errors import ConfigError
from editkit.models.bridge import TokenBridge
from editkit.models.lm import LanguageModel
from editkit.trained import find, load_adapter_lm, part_fingerprint, recorded_defer, verify

log = logging.getLogger(__name__)

TEMPLATE = "{edit}\n{input}"


@dataclass
class RetrievalConfig(MemoryConfig):
    scope: Literal["embed", "cross", "embed-untrained"] = field(
        default="embed", metadata={"help": "scope classifier: embed, cross, or embed-untrained (raw MiniLM)"}
    )
    candidates: int = field(default=5, metadata={"help": "cross: how many nearest edits the cross-encoder reads"})
    cross_floor: float = field(
        default=0.0,
        metadata={
            "help": "cross: the cross-encoder reads only candidates the embedding classifier gives at least this "
            "probability (0: all)"
        },
    )
    artifacts: str | None = field(
        default=None,
        metadata={
            "help": "folder of trained parts (editkit train serac), or a packaged set: serac-hard (QA, QA-hard "
            "and fact checking, no cross classifier); default: the packaged ones"
        },
    )
    encoder: str = field(default="minilm-l6", metadata={"help": "sentence encoder the scope classifier was built on"})
    scope_int8: bool = field(
        default=False,
        metadata={
            "help": "the scope classifier's encoders with int8 weights (CPU only): an input's routing costs about "
            "a third; stored keys are recomputed"
        },
    )
    template: str = field(
        default=TEMPLATE, metadata={"help": "prompt that puts the edit before the input ({edit}, {input})"}
    )
    defer_judge: str | None = field(
        default=None,
        metadata={
            "help": "a folder of trained parts (editkit train serac) whose counterfactual model's KL decides "
            "deferral, while the configured one answers; without defer_kl, at the cut recorded with it (editkit "
            "pack --defer; serac-keep: 2.96 against the twin)"
        },
    )

    def deferral(self) -> tuple[float, bool]:
        """With ``defer_judge`` and no ``defer_kl``: the cut and comparison recorded with the judge."""
        if self.defer_judge is None or self.defer_kl > 0:
            return super().deferral()
        recorded = recorded_defer(find("serac", self.defer_judge))
        if recorded is None:
            raise ConfigError(
                f"{type(self).__name__}: defer_judge {self.defer_judge} records no calibrated cut; give defer_kl, "
                "or pack the judge with `editkit pack --defer CALIBRATION`"
            )
        if self.defer_contrast and not recorded["defer_contrast"]:
            raise ConfigError(
                f"{type(self).__name__}: defer_judge {self.defer_judge}'s cut was calibrated against the base model, "
                "not the twin; give defer_kl with defer_contrast"
            )
        return float(recorded["defer_kl"]), bool(recorded["defer_contrast"])

    def validate(self) -> None:
        super().validate()
        if self.candidates < 1:
            raise ConfigError(f"{type(self).__name__}: candidates must be at least 1")
        if not 0.0 <= self.cross_floor <= 1.0:
            raise ConfigError(f"{type(self).__name__}: cross_floor must be in [0, 1], got {self.cross_floor}")
        if "{edit}" not in self.template or "{input}" not in self.template:
            raise ConfigError(f"{type(self).__name__}: template needs '{{edit}}' and '{{input}}'")


class _Retrieval(MemoryEditor):
    """Builds the configured scope classifier (shared by SERAC and RP). Both take statements: the scope
    classifier embeds the statement as the descriptor z_e, and the answerer reads it in its prompt."""

    capabilities: ClassVar[Capabilities] = Capabilities(storage="memory", batch=True, free_form=True)
    config: RetrievalConfig

    def parts(self) -> list[str]:
        """The trained parts this configuration loads."""
        return {"embed": ["scope-embed"], "cross": ["scope-embed", "scope-cross"]}.get(self.config.scope, [])

    def artifacts(self) -> Path:
        """The folder of trained parts (``editkit train serac``)."""
        return find("serac", self.config.artifacts, ", or use scope=embed-untrained")

    def provenance(self) -> dict[str, str]:
        judged = {}
        if self.config.defer_judge is not None:
            judged["defer-judge"] = part_fingerprint(find("serac", self.config.defer_judge) / "counterfactual")
            kl, contrast = self.config.deferral()
            judged["defer-cut"] = f"{kl:.6g}{' against the twin' if contrast else ''}"
        if not self.parts():
            return judged
        folder = self.artifacts()
        return {**{part: part_fingerprint(folder / part) for part in self.parts()}, **judged}

    def build_judge(self, lm: LanguageModel) -> Answerer | None:
        if self.config.defer_judge is None:
            return None
        return counterfactual_answerer(find("serac", self.config.defer_judge), lm)

    def build_scope(self, lm: LanguageModel) -> ScopeModel:
        scope = self._float_scope()
        return scope.quantized() if self.config.scope_int8 else scope

    def _float_scope(self) -> EmbedScope | CrossScope:
        cfg = self.config
        if cfg.scope == "embed-untrained":
            return EmbedScope.untrained(cfg.encoder)
        folder = self.artifacts()
        verify(folder, [p for p in self.parts() if p.startswith("scope")])
        embed = EmbedScope.load(folder / "scope-embed", cfg.encoder)
        if cfg.scope == "embed":
            return embed
        return CrossScope.load(folder / "scope-cross", embed, cfg.encoder, cfg.candidates, cfg.cross_floor)


@register
class RP(_Retrieval):
    name = "rp"
    config_cls: ClassVar[type[EditorConfig]] = RetrievalConfig

    def build_answerer(self, lm: LanguageModel) -> Answerer:
        return PromptedAnswerer(lm, template_prompt(self.config.template))


@register
class SERAC(_Retrieval):
    name = "serac"
    config_cls: ClassVar[type[EditorConfig]] = RetrievalConfig
    capabilities: ClassVar[Capabilities] = Capabilities(storage="memory", trained=True, batch=True, free_form=True)

    def parts(self) -> list[str]:
        return [*super().parts(), "counterfactual"]

    def build_answerer(self, lm: LanguageModel) -> Answerer:
        return counterfactual_answerer(self.artifacts(), lm)


def counterfactual_answerer(folder: Path, lm: LanguageModel) -> PromptedAnswerer:
    """The counterfactual model h of a folder of trained parts, answering for base model ``lm`` (through a token
    bridge when their vocabularies differ) with the prompt template it was trained on."""
    manifest = verify(folder, ["counterfactual"])
    h = load_adapter_lm(folder / "counterfactual", "serac-h")
    bridge = None
    if h.tokenizer.get_vocab() != lm.tokenizer.get_vocab():
        log.info("counterfactual model %s answers for %s through a token bridge", h.name, lm.name)
        bridge = TokenBridge(lm, h)
    return PromptedAnswerer(h, template_prompt(manifest.get("template", TEMPLATE)), bridge=bridge)
