"""Scope classifiers g(z_e, x) of SERAC (Mitchell et al. 2022, §3.1), on a sentence encoder (MiniLM).

* :class:`EmbeddingClassifier` (**Embed**): the edit descriptor and the input are embedded separately (mean
  pooling, unit length); the logit is ``bias - scale * ||e(z_e) - e(x)||^2``, the negative squared Euclidean
  distance up to a learned affine map (with scale 1 and bias 0 it is exactly the paper's log-likelihood
  proxy; the two learned numbers let the 0.5 threshold of eq. 1 fall where the data puts it). Edits are
  indexed by their embeddings, so routing one input against many edits is one nearest-neighbour search.
* :class:`CrossClassifier` (**Cross**): the pair ``[z_e ; x]`` is read together by the encoder (full
  cross-attention); a linear head on the mean-pooled pair gives the logit. It is applied to the few nearest
  edits the embedding index returns.

Both are trained with the binary cross-entropy of eq. 2 (:mod:`editkit.training.serac`) as LoRA adapters on
the encoder, merged into its weights when loaded (:mod:`editkit.trained`). :class:`EmbedScope` and
:class:`CrossScope` are the :class:`~editkit.editors.memory.ScopeModel` views the memory uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from editkit.editors.memory import ScopeModel, descriptor_of
from editkit.edits import EditRequest
from editkit.memory.store import EditRecord
from editkit.models.encoder import SentenceEncoder
from editkit.trained import load_adapter_encoder, load_tensors

# Raw all-MiniLM-L6-v2, untrained: in-scope rephrases of zsRE lie below squared distance ~0.5 and unrelated
# questions above ~1.2 (docs/benchmarks.md); p = 0.5 at 0.45.
UNTRAINED_SCALE = 8.0
UNTRAINED_BIAS = 8.0 * 0.45
HEAD = "head.safetensors"  # a classifier's head tensors, beside its adapter in a trained part


class EmbeddingClassifier(nn.Module):
    """logit(z, x) = bias - scale * ||e(z) - e(x)||^2 with e the encoder's pooled, unit-length embedding."""

    def __init__(self, encoder: SentenceEncoder, scale: float = 1.0, bias: float = 0.0) -> None:
        super().__init__()
        self.encoder_model = encoder.model
        self.encoder = encoder
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(scale))))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        inputs = self.encoder.tokenize(texts)
        return self.encoder.pool(self.encoder.hidden(inputs), inputs["attention_mask"])

    def logits_from_sqdist(self, sqdist: torch.Tensor) -> torch.Tensor:
        return self.bias - self.log_scale.exp() * sqdist

    def head_state(self) -> dict[str, torch.Tensor]:
        return {"log_scale": self.log_scale.detach().clone(), "bias": self.bias.detach().clone()}


class CrossClassifier(nn.Module):
    """logit(z, x) = w . meanpool(encoder([z ; x])) + b."""

    def __init__(self, encoder: SentenceEncoder) -> None:
        super().__init__()
        self.encoder_model = encoder.model
        self.encoder = encoder
        self.head = nn.Linear(encoder.dim, 1)

    def logits(self, edits: Sequence[str], inputs: Sequence[str]) -> torch.Tensor:
        enc = self.encoder.tokenize(edits, inputs)
        return self.head(self.encoder.pool(self.encoder.hidden(enc), enc["attention_mask"])).squeeze(-1)

    def head_state(self) -> dict[str, torch.Tensor]:
        return {"head.weight": self.head.weight.detach().clone(), "head.bias": self.head.bias.detach().clone()}


# --------------------------------------------------------------------------- scope models for the memory
class EmbedScope(ScopeModel):
    """Embed classifier as a memory scope: index keys are edit embeddings; scores come from the distances."""

    candidates = 1

    def __init__(self, encoder: SentenceEncoder, scale: float, bias: float, tag: str) -> None:
        self.encoder = encoder
        self.scale = scale
        self.bias = bias
        self.tag = tag
        self._space = f"embed:{tag}"

    @classmethod
    def untrained(cls, encoder_name: str = "minilm-l6") -> EmbedScope:
        encoder = SentenceEncoder.load(encoder_name)
        return cls(encoder, UNTRAINED_SCALE, UNTRAINED_BIAS, tag=f"{encoder_name}:{encoder.fingerprint()}")

    @classmethod
    def load(cls, folder: Path, encoder_name: str) -> EmbedScope:
        encoder, sha = load_adapter_encoder(folder, encoder_name)
        head = load_tensors(folder, HEAD)
        return cls(encoder, float(head["log_scale"].exp()), float(head["bias"]), tag=sha[:16])

    def quantized(self) -> EmbedScope:
        """The same classifier with int8 encoder weights (:meth:`SentenceEncoder.quantized`): its keys are
        another space, so a memory built with the float encoder re-embeds its edits."""
        return EmbedScope(self.encoder.quantized(), self.scale, self.bias, tag=f"{self.tag}:int8")

    @property
    def space(self) -> str:
        return self._space

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def edit_vectors(self, requests: Sequence[EditRequest]) -> np.ndarray:
        return self.encoder.embed([descriptor_of(r) for r in requests]).numpy()

    def query_vectors(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.embed(texts).numpy()

    def probabilities(self, sqdist: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-(self.bias - self.scale * sqdist)))

    def scores(
        self, texts: Sequence[str], candidates: Sequence[Sequence[EditRecord]], sqdist: np.ndarray
    ) -> np.ndarray:
        return self.probabilities(np.where(np.isfinite(sqdist), sqdist, 1e9)).astype(np.float32)


class CrossScope(ScopeModel):
    """Cross classifier as a memory scope: the embedding index proposes ``candidates`` edits per input; the
    cross-encoder scores each (edit, input) pair. With ``floor`` > 0 it reads only the candidates the embedding
    classifier gives at least that probability (the rest score 0): most out-of-scope inputs are then routed by
    one embedding and a search, and the cross-encoder checks the possible matches."""

    def __init__(
        self, retrieval: EmbedScope, classifier: CrossClassifier, candidates: int, tag: str, floor: float = 0.0
    ) -> None:
        self.retrieval = retrieval
        self.classifier = classifier.eval()
        self.candidates = candidates
        self.floor = floor
        self.tag = tag
        self._space = f"{retrieval.space}|cross:{tag}"

    @classmethod
    def load(
        cls, folder: Path, retrieval: EmbedScope, encoder_name: str, candidates: int, floor: float = 0.0
    ) -> CrossScope:
        encoder, sha = load_adapter_encoder(folder, encoder_name)
        classifier = CrossClassifier(encoder)
        classifier.load_state_dict({k: v for k, v in load_tensors(folder, HEAD).items()}, strict=False)
        return cls(retrieval, classifier, candidates, tag=sha[:16], floor=floor)

    def quantized(self) -> CrossScope:
        """Both encoders (retrieval and cross) with int8 weights; the head is kept as it is."""
        classifier = CrossClassifier(self.classifier.encoder.quantized())
        classifier.head.load_state_dict(self.classifier.head.state_dict())
        return CrossScope(self.retrieval.quantized(), classifier, self.candidates, tag=self.tag, floor=self.floor)

    @property
    def space(self) -> str:
        return self._space  # keys are the retrieval embeddings

    @property
    def dim(self) -> int:
        return self.retrieval.dim

    def edit_vectors(self, requests: Sequence[EditRequest]) -> np.ndarray:
        return self.retrieval.edit_vectors(requests)

    def query_vectors(self, texts: Sequence[str]) -> np.ndarray:
        return self.retrieval.query_vectors(texts)

    @torch.no_grad()
    def scores(
        self, texts: Sequence[str], candidates: Sequence[Sequence[EditRecord]], sqdist: np.ndarray
    ) -> np.ndarray:
        out = np.zeros(sqdist.shape, dtype=np.float32)
        embed = self.retrieval.scores(texts, candidates, sqdist)
        pairs = [(i, j) for i, row in enumerate(candidates) for j in range(len(row)) if embed[i, j] >= self.floor]
        for start in range(0, len(pairs), 64):
            chunk = pairs[start : start + 64]
            logits = self.classifier.logits(
                [candidates[i][j].descriptor for i, j in chunk], [texts[i] for i, _ in chunk]
            )
            for (i, j), p in zip(chunk, torch.sigmoid(logits).float().cpu().tolist(), strict=True):
                out[i, j] = p
        return out
