"""MEMIT: Mass-Editing Memory in a Transformer (Meng et al., 2023).

Many edits at once, spread over a range of MLP layers R = [l_1 .. L]:

* For each edit i, a target hidden state z_i = h_i^L + delta_i of the residual stream after layer L at the
  subject's last token, with delta_i optimised as ROME optimises v* (new target's NLL over context-prefixed
  prompts, essence-drift KL, norm clamp), but added to the whole layer's output instead of the MLP's
  (:meth:`~editkit.editors.locate.LocateEditor.target_residuals` with ``site="block"``; the batch's requests
  share one set of passes, ``v_batch`` at a time, each its own optimisation).
* Then, for each layer l of R from the lowest up (MEMIT Algorithm 1): keys K_l (each edit's key at l, averaged
  over the context prefixes, under the weights as updated so far), the residual still missing at layer L,
  R_l = (z - h^L) / (number of layers left), and the update

      Delta_l = R_l K_l^T (lambda C_l + K_l K_l^T)^{-1}

  (MEMIT eq. 14), the least-squares change of W_l that maps K_l to W_l K_l + R_l while keeping the corpus keys'
  outputs (second moment C_l, weight ``mom2_update_weight`` = lambda) in place. Where the MLP's output passes
  through a norm before it joins the residual stream (Gemma's ``post_feedforward_layernorm``,
  ``ArchAdapter.mlp_out_norm``), R_l is first carried back through that norm, in Gauss-Newton steps that keep
  each output's length (:func:`output_change_for`): the residual stream receives the norm's image of the
  output, and on Gemma-3-270M the output itself is about a thousandth of the stream's norm, so R_l taken as
  the output's change would replace it (docs/benchmarks.md, "Gemma-3-270M's first 200 sequential edits").
  Without a corpus C = I, and MEMIT's lambda (15,000, a weight for corpus statistics, whose scale is far below
  the identity's) holds every update back: on SmolLM2 no CounterFact edit of ten took (docs/benchmarks.md).
  That combination is refused; without a corpus a lambda for C = I must be given (15 took all ten).

C_l is measured on the model as it is when the editor first sees it (``prepare``) and kept for the editor's
life, as MEMIT's reference implementation does: after sequential edits, the preserved statistics remain those
of the original model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from editkit.editors.base import Capabilities, WeightUpdate, register
from editkit.editors.handle import pack_tensor, recorded_tensor
from editkit.editors.locate import PROGRESS_FROM, LocateEditConfig, LocateEditor
from editkit.editors.passes import layer_output_hidden, step_cache
from editkit.edits import EditRequest
from editkit.errors import ConfigError, ValidationError
from editkit.models.hooks import StopForward, hooks
from editkit.models.lm import CACHE_KEY, LanguageModel
from editkit.progress import progress_bar

MEMIT_LAMBDA = 15_000.0  # MEMIT's GPT-J value of lambda, for corpus statistics
STATE_ROWS = 64  # prompts whose keys are read in one pass
NORM_JACOBIAN_RTOL = 1e-5  # singular values of a norm's Jacobian below this share of the largest count as zero
NORM_JACOBIAN_ELEMENTS = 2**26  # Jacobian entries held at once (512 MB in float64): a mass edit goes in chunks
NORM_STEPS = 12  # Gauss-Newton steps through a post-MLP norm (at most: they stop once every image is reached)
NORM_REACHED = 1e-4  # an image is reached when it misses by less than this share of the change wanted
NORM_LENGTH_GAIN = 0.9  # a Gauss-Newton step may lengthen an output only if that cuts its image's miss by 10%


@dataclass
class MEMITConfig(LocateEditConfig):
    layers: list[int] | None = field(
        default=None, metadata={"help": "layers to edit (ascending); default: 5 layers up to the model's edit layer"}
    )
    mom2_update_weight: float = field(
        default=MEMIT_LAMBDA,
        metadata={
            "help": "lambda: weight of the preserved keys' second moment (MEMIT eq. 14); the default is MEMIT's "
            "GPT-J value, on SmolLM2-135M 1500 makes more edits take (docs/benchmarks.md)"
        },
    )

    def validate(self) -> None:
        super().validate()
        if self.layers is not None and (not self.layers or self.layers != sorted(set(self.layers))):
            raise ConfigError(f"MEMITConfig: layers must be distinct and ascending, got {self.layers}")
        if self.mom2_update_weight <= 0:
            raise ConfigError("MEMITConfig: mom2_update_weight must be positive")
        if self.corpus is None and self.mom2_update_weight == MEMIT_LAMBDA:
            raise ConfigError(
                f"{type(self).__name__}: without a corpus (C = I) the default mom2_update_weight ({MEMIT_LAMBDA:g}, "
                "a weight for corpus statistics) holds every edit back; give corpus=FILE (a text file such as "
                "WikiText), or a weight for C = I (mom2_update_weight=15 edits SmolLM2, docs/benchmarks.md)"
            )


def preserved_factor(cov: torch.Tensor | None, weight: float, dim: int) -> torch.Tensor | None:
    """The Cholesky factor of ``weight C`` (float64; ``cov`` None means C = I), or None where C is not positive
    definite in float64 (:func:`memit_update` then solves the whole system)."""
    c = torch.eye(dim, dtype=torch.float64) if cov is None else cov.double()
    factor, info = torch.linalg.cholesky_ex(weight * c)
    return factor if int(info) == 0 else None


def memit_update(
    resid: torch.Tensor,
    keys: torch.Tensor,
    cov: torch.Tensor | None,
    weight: float,
    factor: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[out, in]`` update ``R K^T (weight C + K K^T)^{-1}`` for residuals ``R`` ``[out, n]`` and keys ``K``
    ``[in, n]`` (MEMIT eq. 14); ``cov`` None means C = I. Given ``factor`` (:func:`preserved_factor`) and fewer
    keys than dimensions, by Woodbury: ``(M + K K^T)^{-1} K = Y (I + K^T Y)^{-1}`` with ``Y = M^{-1} K``, two
    triangular solves against the kept factor and an ``n x n`` system instead of a ``d x d`` one per call."""
    k = keys.double()
    if factor is not None and k.shape[1] < k.shape[0]:
        y = torch.cholesky_solve(k, factor.to(k.device))  # [in, n]
        small = k.T @ y
        small.diagonal().add_(1.0)
        adj = torch.linalg.solve(small, y.T).T  # small is symmetric
    else:
        c = torch.eye(k.shape[0], dtype=torch.float64, device=k.device) if cov is None else cov.double()
        adj = torch.linalg.solve(weight * c + k @ k.T, k)  # [in, n], the matrix is symmetric
    return (resid.double() @ adj.T).float()


def output_change_for(norm: nn.Module, outputs: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """The changes ``[n, d]`` of the MLP outputs ``outputs`` ``[n, d]`` whose images through ``norm`` come closest
    to moving by ``wanted`` ``[n, d]``, each changed output as long as before.

    A norm ignores its input's length, so a change along the output does nothing, and a change across it turns
    it. One linear step (least squares through the norm's Jacobian at the output) asks for a change as large as
    the output wherever ``wanted`` is a sizeable part of the norm's image, and there it both misses (the image
    turns less than the linearisation says) and lengthens the output: in a sequence of edits the longer output
    has a smaller Jacobian, so the next edit asks for a larger change, and the weights run away (AlphaEdit on
    Gemma-3, 20 edits: layer 4's drift 185,793). So the image is reached in Gauss-Newton steps, each taken
    through the Jacobian at the current output and then scaled back to the output's length, unless the longer
    output misses the image by :data:`NORM_LENGTH_GAIN` of the shorter's or less (outputs so small that the
    norm's eps matters, where length does move the image); at most :data:`NORM_STEPS` steps, until every image
    misses by less than :data:`NORM_REACHED` of its ``wanted``. An image the norm cannot reach ends at the
    nearest point the steps find."""
    param = next(norm.parameters(), None)
    device = param.device if param is not None else outputs.device
    dtype = param.dtype if param is not None else outputs.dtype

    def image(x: torch.Tensor) -> torch.Tensor:
        return norm(x.unsqueeze(0)).squeeze(0).float()

    def images(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.func.vmap(image)(x.to(dtype)).double()

    chunk = max(1, NORM_JACOBIAN_ELEMENTS // outputs.shape[1] ** 2)  # [chunk, d, d] Jacobians at a time
    solved = []
    for start in range(0, outputs.shape[0], chunk):
        first = outputs[start : start + chunk].to(device, dtype)
        length = first.double().norm(dim=1, keepdim=True)
        target = images(first) + wanted[start : start + chunk].to(device).double()
        enough = NORM_REACHED * wanted[start : start + chunk].to(device).double().norm(dim=1)
        current = first.double()
        miss = target - images(current)
        for _ in range(NORM_STEPS):
            if bool((miss.norm(dim=1) <= enough).all()):
                break
            jac = torch.func.vmap(torch.func.jacrev(image))(current.to(dtype)).detach().double()
            stepped = current + (torch.linalg.pinv(jac, rtol=NORM_JACOBIAN_RTOL) @ miss.unsqueeze(-1)).squeeze(-1)
            kept = stepped * (length / stepped.norm(dim=1, keepdim=True))
            miss_stepped, miss_kept = target - images(stepped), target - images(kept)
            # the longer output only where its length moves the image (a norm whose eps is not small against
            # the output's mean square); where the norm ignores length, the length is kept
            longer = (miss_stepped.norm(dim=1) < NORM_LENGTH_GAIN * miss_kept.norm(dim=1)).unsqueeze(1)
            current = torch.where(longer, stepped, kept)
            miss = torch.where(longer, miss_stepped, miss_kept)
        solved.append(current - first.double())
    return torch.cat(solved).float().to(wanted.device)


@register
class MEMIT(LocateEditor):
    name = "memit"
    config_cls = MEMITConfig
    capabilities = Capabilities(storage="weights", batch=True, needs_subject=True, replay=True)
    config: MEMITConfig

    def __init__(self, config: MEMITConfig | None = None) -> None:
        super().__init__(config)
        self._covs: dict[tuple[int, int], torch.Tensor | None] = {}
        self._factors: dict[tuple[int, int], torch.Tensor | None] = {}  # of weight C, as the covariances

    def layers(self, lm: LanguageModel) -> list[int]:
        if self.config.layers is not None:
            layers = list(self.config.layers)
        else:
            last = lm.default_edit_layer
            layers = list(range(max(0, last - 4), last + 1))
        for layer in layers:
            lm.adapter.check_layer(lm.model, layer)
        return layers

    def target_parameters(self, lm: LanguageModel, requests: Sequence[EditRequest]) -> list[str]:
        return [lm.adapter.weight_name(layer, "mlp_out") for layer in self.layers(lm)]

    def residual_site(self, lm: LanguageModel) -> tuple[int, Literal["mlp_out", "block"]]:
        return self.layers(lm)[-1], "block"

    def prepare(self, lm: LanguageModel, *, progress: bool = False) -> None:
        self.context_templates(lm)
        layers = [layer for layer in self.layers(lm) if (id(lm.model), layer) not in self._covs]
        for layer, cov in self.covariances(lm, layers, progress=progress).items():
            self._covs[(id(lm.model), layer)] = cov

    def preserved_covariance(self, lm: LanguageModel, layer: int, *, progress: bool = False) -> torch.Tensor | None:
        """C_l of the model as the editor first saw it (see the module docstring)."""
        key = (id(lm.model), layer)
        if key not in self._covs:
            self._covs[key] = self.covariance(lm, layer, progress=progress)
        return self._covs[key]

    def layer_update(self, lm: LanguageModel, layer: int, resid: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The ``[out, in]`` change of ``layer``'s MLP output projection for residuals ``[out, n]`` and keys
        ``[in, n]`` (eq. 14)."""
        cov, weight = self.preserved_covariance(lm, layer), self.config.mom2_update_weight
        key = (id(lm.model), layer)
        if key not in self._factors:
            self._factors[key] = preserved_factor(cov, weight, keys.shape[0])
        return memit_update(resid, keys, cov, weight, self._factors[key])

    def subject_states(
        self,
        lm: LanguageModel,
        requests: Sequence[EditRequest],
        key_layer: int,
        out_layer: int,
        *,
        advance: Callable[[int], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per request, at the subject's last token: the key entering ``key_layer``'s MLP output projection,
        averaged over the context prefixes (``[n, d_in]``), and the output of layer ``out_layer`` on the bare
        prompt (``[n, d_model]``). Each prompt is cut after the subject's last token (what follows cannot reach
        it); a context template's sampled text, which starts every prompt in it, runs once, and the prompts'
        rest over its key/value cache (:meth:`_shared_prefixes`); the prompts of all the requests are read a
        template at a time in order of length, :data:`STATE_ROWS` per pass (little padding). On SmolLM2 and
        CounterFact 4x faster than each request's whole prompts with their targets (benchmarks/memit_keys.py).
        ``advance(n)`` is called after each pass with the requests' worth of prompts it read."""
        templates = self.context_templates(lm)
        prefixes = self._shared_prefixes(lm, templates)
        rows: list[list[int]] = []  # what each prompt's pass runs: its tokens after a shared prefix, or all
        shared: list[int | None] = []  # the template whose prefix the pass starts from (None: from the start)
        owner: list[int] = []
        for i, req in enumerate(requests):
            texts, idx = self.rendered(lm, req)  # the bare prompt comes first, then one per template
            for t, (text, j) in enumerate(zip(texts, idx, strict=True)):
                ids, kept = lm.encode(text)[: j + 1], prefixes[t]
                if kept is not None and len(ids) > len(kept[0]) and ids[: len(kept[0])] == kept[0]:
                    rows.append(ids[len(kept[0]) :])
                    shared.append(t)
                else:
                    rows.append(ids)
                    shared.append(None)
                owner.append(i)
        # passes of one template's rows at a time (they share its prefix), each template's in order of length
        order = sorted(range(len(rows)), key=lambda r: (-1 if shared[r] is None else shared[r], len(rows[r])))
        keys: list[torch.Tensor] = []
        outs: list[torch.Tensor] = []
        start = 0
        while start < len(order):
            source = shared[order[start]]
            end = start + 1
            while end < min(start + STATE_ROWS, len(order)) and shared[order[end]] == source:
                end += 1
            prefix = None if source is None else prefixes[source]
            chunk = [rows[r] for r in order[start:end]]
            k, o = self._last_token_states(lm, chunk, key_layer, out_layer, prefix)
            keys.append(k)
            outs.append(o)
            if advance is not None:  # in requests' worth of prompts read
                advance(end * len(requests) // len(rows) - start * len(requests) // len(rows))
            start = end
        back = torch.empty(len(order), dtype=torch.long)
        back[torch.tensor(order)] = torch.arange(len(order))  # row r was read at position back[r]
        row_keys, row_outs = torch.cat(keys)[back], torch.cat(outs)[back]
        group = torch.tensor(owner)
        n = len(requests)
        sums = torch.zeros((n, row_keys.shape[1])).index_add_(0, group, row_keys)
        first = torch.tensor([owner.index(i) for i in range(n)])
        return sums / torch.bincount(group, minlength=n).unsqueeze(1).float(), row_outs[first]

    def _shared_prefixes(self, lm: LanguageModel, templates: Sequence[str]) -> list[tuple[list[int], Any] | None]:
        """Per context template, the tokens of its sampled text and their key/value cache under the weights as
        they are now (every prompt in the template starts with them), or None: the bare template, or a model
        whose passes do not take a cache (encoder-decoder)."""
        out: list[tuple[list[int], Any] | None] = []
        for template in templates:
            text = template[: template.index("{}")].rstrip()
            if not text or lm.is_encoder_decoder:
                out.append(None)
                continue
            ids = lm.encode(text)
            with torch.no_grad():
                ran = lm.model(input_ids=torch.tensor([ids], device=lm.device), use_cache=True)
            out.append((ids, ran[CACHE_KEY]))
        return out

    def _last_token_states(
        self,
        lm: LanguageModel,
        rows: Sequence[list[int]],
        key_layer: int,
        out_layer: int,
        prefix: tuple[list[int], Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """At each row's last token: the input of ``key_layer``'s MLP output projection and the output of layer
        ``out_layer`` (the forward stops there), on the CPU. With ``prefix`` (tokens and their cache) the rows
        are what follows it: the pass runs them over a copy of the cache, one per row."""
        ids, mask = lm.pad(rows)
        each, last = torch.arange(len(rows), device=lm.device), mask.sum(1) - 1
        got: dict[str, torch.Tensor] = {}

        def grab_key(_m: nn.Module, args: tuple[Any, ...]) -> None:
            got["keys"] = args[0][each, last].detach().float()

        def grab_out(_m: nn.Module, _args: Any, out: Any) -> None:
            got["out"] = layer_output_hidden(out)[each, last].detach().float()
            raise StopForward  # nothing above ``out_layer`` is needed

        mlp_out = lm.adapter.module(lm.model, key_layer, "mlp_out")
        block = lm.adapter.layer_list(lm.model)[out_layer]
        run = lm.model.get_encoder() if lm.is_encoder_decoder else lm.model  # type: ignore[operator]
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if prefix is not None:
            n_prefix = len(prefix[0])
            cache = step_cache(prefix[1])
            cache.batch_repeat_interleave(len(rows))
            ones = torch.ones((len(rows), n_prefix), dtype=mask.dtype, device=mask.device)
            positions = n_prefix + torch.arange(ids.shape[1], device=lm.device).expand(len(rows), -1)
            inputs = {**inputs, "attention_mask": torch.cat([ones, mask], 1), "position_ids": positions}
            inputs |= {CACHE_KEY: cache, "use_cache": True}
        elif not lm.is_encoder_decoder:
            inputs["use_cache"] = False
        hooked = hooks([(mlp_out, "forward_pre", grab_key), (block, "forward", grab_out)])
        with torch.no_grad(), hooked, contextlib.suppress(StopForward):
            run(**inputs)
        return got["keys"].cpu(), got["out"].cpu()

    def compute(
        self, lm: LanguageModel, requests: Sequence[EditRequest], params: dict[str, nn.Parameter]
    ) -> WeightUpdate:
        residuals = self.target_residuals(lm, requests, *self.residual_site(lm))
        targets = torch.stack([r.v_init + r.delta for r in residuals])  # z_i, [n, d_model]
        info = {key: [r.info[key] for r in residuals] for key in ("steps", "nll_last", "batched_with")}
        # what each residual's optimisation took, in this process or the one that left it in residual_cache
        info["residual_seconds"] = [r.info.get("residual_seconds") for r in residuals]
        return self._spread(lm, requests, params, targets, info)

    def recompute(
        self,
        lm: LanguageModel,
        requests: Sequence[EditRequest],
        params: dict[str, nn.Parameter],
        recorded: Mapping[str, Any],
    ) -> WeightUpdate:
        targets = recorded_tensor(recorded, "targets")
        return self._spread(lm, requests, params, targets, {"replayed": True})

    def _spread(
        self,
        lm: LanguageModel,
        requests: Sequence[EditRequest],
        params: dict[str, nn.Parameter],
        targets: torch.Tensor,
        info: dict[str, Any],
    ) -> WeightUpdate:
        """Walk the layers from the lowest up, each taking its share of what is still missing to reach the
        targets z (MEMIT Algorithm 1). ``info["replay"]`` keeps z, from which the same walk on the same weights
        makes the same change. ``remember`` holds, per edited parameter, the keys ``[in, n]`` its update was
        solved for."""
        layers = self.layers(lm)
        last = layers[-1]
        new: dict[str, torch.Tensor] = {}
        solved_for: dict[str, torch.Tensor] = {}
        per_layer = []
        shown = len(requests) >= PROGRESS_FROM
        with progress_bar(len(layers) * len(requests), f"{self.name} keys and update, layers {layers}", shown) as bar:
            for i, layer in enumerate(layers):
                keys, current = self.subject_states(lm, requests, layer, last, advance=bar.advance)
                if targets.shape != current.shape:
                    raise ValidationError(
                        f"targets of shape {list(targets.shape)} for {len(requests)} request(s) whose hidden states "
                        f"at layer {last} are {list(current.shape)}"
                    )
                resid = (targets - current) / (len(layers) - i)
                name = lm.adapter.weight_name(layer, "mlp_out")
                w = params[name]
                if lm.adapter.mlp_out_norm:  # the residual takes the norm's image of the MLP output, not the output
                    outputs = keys @ lm.adapter.as_out_in(w.detach().float()).T.cpu()
                    resid = output_change_for(lm.adapter.module(lm.model, layer, "mlp_out_norm"), outputs, resid)
                update = self.layer_update(lm, layer, resid.T, keys.T)
                # rounded once (low precision)
                edited = w.detach().float() + lm.adapter.from_out_in(update).to(w.device)
                with torch.no_grad():  # the layers above see this layer's update (MEMIT Algorithm 1)
                    w.copy_(edited)
                new[name] = edited
                solved_for[name] = keys.T.detach().cpu().clone()
                norms = {"residual_norm": float(resid.norm(dim=1).mean()), "update_norm": float(update.norm())}
                per_layer.append({"layer": layer, **norms})
        info = {**info, "layers": layers, "per_layer": per_layer, "replay": {"targets": pack_tensor(targets)}}
        return WeightUpdate(new, info, remember=solved_for)


__all__ = ["MEMIT", "MEMITConfig", "memit_update"]
