"""KE: KnowledgeEditor (De Cao et al., 2021), a hypernetwork that turns an edit's gradient into its update.

For an edit (prompt x, old answer y, new answer a) and each edited matrix W (``[out, in]``), the edit loss
``L = -log p(a | x)`` gives the gradient ``G = dL/dW`` at the unedited weights. A hypernetwork conditioned on the
edit predicts five things per matrix: ``alpha_out`` and ``alpha_in`` (positive, each a softmax scaled to mean 1),
``beta_out`` and ``beta_in`` (free), and ``eta``; KE's update is (:func:`ke_update`)::

    W' = W - sigma(eta) * max_scale * (alpha_hat * G + beta_hat),  alpha_hat = alpha_out alpha_in^T,
                                                                    beta_hat = beta_out beta_in^T

(``*`` elementwise; the minus sign makes ``alpha_hat = 1, beta_hat = 0`` a plain gradient-descent step of size
``sigma(eta) * max_scale``). The paper encodes ``[x; y; a]`` with its own LSTM; here the edit is encoded by the
frozen base model itself: the mean of its final hidden states (the head's input) over prompt + new answer,
concatenated with the same over prompt + old answer (``target_true``, or the model's own greedy next token when
the request does not name one). No other encoder is loaded.

Several requests in one apply are edited together as SLAG does (Hase et al., 2021): each request gets its own
update from its own gradient and encoding, and the updates are summed. A hypernetwork trained with
``slag: true`` (``editkit train ke``) has learnt updates that hold when summed; its parts record ``method: SLAG``.

The trained part (``hypernet``) is found with :func:`editkit.trained.find` and verified for the base model; its
``part.json`` names the edited matrices and their shapes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from editkit.editors.base import Capabilities, EditorConfig, WeightEditor, WeightUpdate, register
from editkit.edits import EditRequest
from editkit.errors import ValidationError
from editkit.models.adapters import get_module
from editkit.models.hooks import hooks
from editkit.models.lm import LanguageModel, TeacherForcedBatch
from editkit.trained import find, load_tensors, part_fingerprint, verify

PART = "hypernet"


# --------------------------------------------------------------------------- the update
def ke_update(
    grad: torch.Tensor,
    alpha_out: torch.Tensor,
    alpha_in: torch.Tensor,
    beta_out: torch.Tensor,
    beta_in: torch.Tensor,
    step: torch.Tensor,
) -> torch.Tensor:
    """KE's update of ``[..., out, in]`` gradients: ``-step * (alpha_out alpha_in^T * grad + beta_out beta_in^T)``,
    with ``[..., out]`` / ``[..., in]`` vectors and ``[...]`` step sizes (leading dimensions: one per edit)."""
    alpha_hat = alpha_out.unsqueeze(-1) * alpha_in.unsqueeze(-2)
    beta_hat = beta_out.unsqueeze(-1) * beta_in.unsqueeze(-2)
    return -step[..., None, None] * (alpha_hat * grad + beta_hat)


@dataclass(frozen=True)
class Modulation:
    """What the hypernetwork predicts for one matrix and a batch of edits (leading dimension: the edits)."""

    alpha_out: torch.Tensor
    alpha_in: torch.Tensor
    beta_out: torch.Tensor
    beta_in: torch.Tensor
    step: torch.Tensor

    def update(self, grad: torch.Tensor) -> torch.Tensor:
        return ke_update(grad, self.alpha_out, self.alpha_in, self.beta_out, self.beta_in, self.step)


def _key(name: str) -> str:
    return name.replace(".", "__")


class HyperNetwork(nn.Module):
    """Edit encoding ``[n, 2 d]`` -> a :class:`Modulation` per edited matrix: a shared trunk (layer norm, linear,
    tanh) and one linear head per matrix. At initialisation ``alpha_hat = 1`` and ``beta_hat`` is small, so an
    untrained hypernetwork makes a gradient step of ``init_step``."""

    def __init__(
        self, cond_dim: int, hidden: int, shapes: Mapping[str, Sequence[int]], max_scale: float, init_step: float
    ) -> None:
        super().__init__()
        self.shapes = {n: (int(s[0]), int(s[1])) for n, s in shapes.items()}
        self.max_scale = max_scale
        self.trunk = nn.Sequential(nn.LayerNorm(2 * cond_dim), nn.Linear(2 * cond_dim, hidden), nn.Tanh())
        self.heads = nn.ModuleDict({_key(n): nn.Linear(hidden, 2 * (o + i) + 1) for n, (o, i) in self.shapes.items()})
        eta0 = float(torch.logit(torch.tensor(min(max(init_step / max_scale, 1e-6), 1 - 1e-6))))
        for head in self.heads.values():
            assert isinstance(head, nn.Linear)
            with torch.no_grad():
                head.weight.mul_(0.1)
                head.bias.zero_()
                head.bias[-1] = eta0
            # alpha's logits start constant (alpha_hat = 1); beta starts small, not zero (a zero outer product
            # would have no gradient)

    def forward(self, cond: torch.Tensor) -> dict[str, Modulation]:
        h = self.trunk(cond)
        out: dict[str, Modulation] = {}
        for name, (o, i) in self.shapes.items():
            raw = self.heads[_key(name)](h)
            a_out, a_in, b_out, b_in, eta = raw.split([o, i, o, i, 1], dim=-1)
            out[name] = Modulation(
                alpha_out=o * a_out.softmax(-1),
                alpha_in=i * a_in.softmax(-1),
                beta_out=b_out,
                beta_in=b_in,
                step=self.max_scale * torch.sigmoid(eta.squeeze(-1)),
            )
        return out

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> HyperNetwork:
        return cls(int(meta["cond_dim"]), int(meta["hidden"]), meta["weights"], float(meta["max_scale"]), 0.0)


# --------------------------------------------------------------------------- passes over the base model
def edited_weights(lm: LanguageModel, layers: Sequence[int], parts: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Names of the matrices KE edits (``parts`` of ``layers``; negative layers count from the top) and their
    ``[out, in]`` shapes."""
    n = lm.adapter.n_layers(lm.model)
    shapes: dict[str, tuple[int, int]] = {}
    params = dict(lm.model.named_parameters())
    for layer in layers:
        index = layer % n if -n <= layer < n else layer
        lm.adapter.check_layer(lm.model, index)
        for part in parts:
            name = lm.adapter.weight_name(index, part)
            o, i = lm.adapter.as_out_in(params[name]).shape
            shapes[name] = (int(o), int(i))
    return shapes


@contextmanager
def row_deltas(
    lm: LanguageModel, deltas: Mapping[str, torch.Tensor], groups: Sequence[int] | None = None
) -> Iterator[None]:
    """Run the model as if each edited matrix W were ``W + deltas[name][g]`` for the batch rows of group g
    (``[groups, out, in]``; without ``groups``, group r is row r): a forward hook adds ``x D_g^T`` to each matrix's
    output, one matrix product per group."""
    rows = None if groups is None else torch.tensor(list(groups))

    def add(delta: torch.Tensor) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            x = args[0]
            d = delta.to(x.dtype)
            if rows is None:
                return output + torch.einsum("rti,roi->rto", x, d)
            extra = torch.empty_like(output)
            for g in range(d.shape[0]):
                mask = rows == g
                extra[mask] = x[mask] @ d[g].T
            return output + extra

        return hook

    with hooks([(get_module(lm.model, name.removesuffix(".weight")), "forward", add(d)) for name, d in deltas.items()]):
        yield


def _pooled_head_inputs(lm: LanguageModel, tf: TeacherForcedBatch) -> tuple[list[torch.Tensor], Any]:
    """A pre-hook on the head that keeps the mean of its input over each row's tokens (the final hidden states of
    prompt + answer; the decoder's for encoder-decoders), and that list."""
    mask = tf.inputs.get("decoder_attention_mask", tf.inputs["attention_mask"]).float()
    pooled: list[torch.Tensor] = []

    def capture(_m: nn.Module, args: tuple[Any, ...]) -> None:
        hidden = args[0].detach().float()
        pooled.append((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))

    return pooled, capture


def edit_gradients(
    lm: LanguageModel, requests: Sequence[EditRequest], names: Sequence[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each request's edit-loss gradient (mean NLL of ``target_new``) for each matrix in ``names``, ``[n, out,
    in]``, at the model's current weights, and the encoding of prompt + new answer, ``[n, d]``. One pass: a zero
    per-row delta on each matrix carries the gradient (``dL/dD_r = dL_r/dW``)."""
    tf = lm.teacher_forced([r.text for r in requests], [r.target_new for r in requests])
    index, valid = tf.positions()
    params = dict(lm.model.named_parameters())
    zeros = {n: torch.zeros(len(requests), *lm.adapter.as_out_in(params[n]).shape, requires_grad=True) for n in names}
    pooled, capture = _pooled_head_inputs(lm, tf)
    head = get_module(lm.model, lm.adapter.head)
    with torch.enable_grad(), row_deltas(lm, zeros), hooks([(head, "forward_pre", capture)]):
        logprobs = tf.token_logprobs(lm.logits_at(tf.inputs, index))
        loss = -(logprobs.sum(1) / valid.sum(1)).sum()
        grads = torch.autograd.grad(loss, [zeros[n] for n in names])
    return dict(zip(names, grads, strict=True)), pooled[0]


def old_answer_encoding(lm: LanguageModel, requests: Sequence[EditRequest]) -> torch.Tensor:
    """The encoding of prompt + old answer, ``[n, d]``: ``target_true`` where given, else the model's greedy next
    token."""
    prompts = [r.text for r in requests]
    olds: list[str | list[int]] = [r.target_true for r in requests if r.target_true is not None]
    if len(olds) < len(requests):
        greedy = lm.next_token_logprobs(prompts).argmax(-1).tolist()
        olds = [r.target_true if r.target_true is not None else [int(g)] for r, g in zip(requests, greedy, strict=True)]
    tf = lm.teacher_forced(prompts, olds)
    pooled, capture = _pooled_head_inputs(lm, tf)
    with torch.no_grad(), hooks([(get_module(lm.model, lm.adapter.head), "forward_pre", capture)]):
        lm.logits_at(tf.inputs, tf.positions()[0])
    return pooled[0]


def edit_deltas(
    lm: LanguageModel, hyper: HyperNetwork, requests: Sequence[EditRequest]
) -> tuple[dict[str, torch.Tensor], dict[str, Modulation]]:
    """Each request's KE update of each matrix, ``[n, out, in]`` (differentiable in ``hyper``'s parameters), and
    the modulations that made them."""
    grads, new = edit_gradients(lm, requests, list(hyper.shapes))
    cond = torch.cat([new, old_answer_encoding(lm, requests)], dim=-1)
    mods = hyper(cond)
    return {n: mods[n].update(grads[n]) for n in hyper.shapes}, mods


# --------------------------------------------------------------------------- the editor
@dataclass
class KEConfig(EditorConfig):
    artifacts: str | None = field(
        default=None,
        metadata={
            "help": "folder written by `editkit train ke` ({model} in it: the base model's name); "
            "default: the parts packaged with editkit"
        },
    )
    scale: float = field(default=1.0, metadata={"help": "multiplies the predicted update (1: as trained)"})


@register
class KE(WeightEditor):
    """KnowledgeEditor; SLAG when its parts were trained with ``slag: true``."""

    name = "ke"
    config_cls: ClassVar[type[EditorConfig]] = KEConfig
    capabilities: ClassVar[Capabilities] = Capabilities(storage="weights", trained=True, batch=True)
    config: KEConfig

    def __init__(self, config: EditorConfig | None = None) -> None:
        super().__init__(config)
        self._loaded: dict[str, tuple[Path, HyperNetwork, dict[str, Any]]] = {}

    def prepare(self, lm: LanguageModel, *, progress: bool = False) -> None:
        """Load and verify the hypernetwork for ``lm`` (so that a run's header records its fingerprint)."""
        self.hypernetwork(lm)

    def provenance(self) -> dict[str, str]:
        return {f"{PART}:{model}": part_fingerprint(folder / PART) for model, (folder, _, _) in self._loaded.items()}

    def hypernetwork(self, lm: LanguageModel) -> tuple[HyperNetwork, dict[str, Any]]:
        """The trained hypernetwork for ``lm`` (verified on first use; refused for another base model) and its
        part's record."""
        if lm.name not in self._loaded:
            self._loaded[lm.name] = self._load(lm)
        _, hyper, meta = self._loaded[lm.name]
        return hyper, meta

    def _load(self, lm: LanguageModel) -> tuple[Path, HyperNetwork, dict[str, Any]]:
        folder: Path = find("ke", self.config.artifacts, model=lm.name)
        manifest = verify(folder, [PART], base_model=lm.name)
        meta: dict[str, Any] = manifest["parts"][PART]
        params = dict(lm.model.named_parameters())
        for name, shape in meta["weights"].items():
            if name not in params or tuple(lm.adapter.as_out_in(params[name]).shape) != tuple(shape):
                raise ValidationError(f"{folder / PART} edits {name} {tuple(shape)}, which {lm.name} does not have")
        hyper = HyperNetwork.from_meta(meta)
        try:
            hyper.load_state_dict(load_tensors(folder / PART))
        except RuntimeError as err:
            raise ValidationError(f"{folder / PART} does not hold a KE hypernetwork of its recorded shape") from err
        return folder, hyper.eval(), meta

    def target_parameters(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> list[str]:
        return list(self.hypernetwork(lm)[1]["weights"])

    def compute(
        self, lm: LanguageModel, requests: Sequence[EditRequest], params: dict[str, nn.Parameter]
    ) -> WeightUpdate:
        hyper, meta = self.hypernetwork(lm)
        values: dict[str, torch.Tensor] = {}
        with torch.no_grad():  # the gradient pass inside enables grad for itself
            deltas, mods = edit_deltas(lm, hyper, requests)
            for name, delta in deltas.items():
                change = lm.adapter.from_out_in(self.config.scale * delta.sum(0))
                values[name] = params[name].detach() + change.to(params[name].dtype)
        info = {
            "method": meta.get("method", "KE"),
            "step": {n: [float(s) for s in m.step] for n, m in mods.items()},
            "update_norm": {n: float(d.sum(0).norm()) for n, d in deltas.items()},
        }
        return WeightUpdate(values, info)


__all__ = ["KE", "PART", "HyperNetwork", "KEConfig", "Modulation", "edit_deltas", "edited_weights", "ke_update"]
