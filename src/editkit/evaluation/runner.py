"""One evaluation run from a config (``editkit eval``): load the model, the data and the editor, run a protocol,
write the results JSON. A config (:class:`RunConfig`, a typed config like the editors': every field carries its
help, and ``editkit eval``'s options are made from the fields) comes from a YAML file, from keyword arguments, or
both (arguments win).

Example ``run.yaml``::

    model: smollm2-135m
    method: rome
    settings: {corpus: ../shared/data/wikitext/wikitext-2/valid.txt}
    data: ../shared/data/counterfact/easyedit/counterfact-val.json
    limit: 200
    protocol: sequential
    every: 20
    downstream: [sst2, mrpc, rte, cola]
    downstream_data: ../shared/data/glue
    out: results/rome_seq.json
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from editkit.configfile import read_yaml
from editkit.edits import ProbeKind
from editkit.errors import ConfigError, ValidationError
from editkit.files import atomic_write, check_writable
from editkit.models.zoo import DEFAULT_MODEL, cache_dir
from editkit.typedconfig import TypedConfig

if TYPE_CHECKING:
    from collections.abc import Sequence

    from editkit.data.formats import Dataset
    from editkit.editors.base import Editor
    from editkit.edits import EditCase
    from editkit.evaluation.guard import EditGuard
    from editkit.evaluation.judged import GenerationJudge

MAPPINGS = ("settings", "guard")  # RunConfig fields that hold settings of their own (KEY: VALUE)


@dataclass
class RunConfig(TypedConfig):
    """One evaluation run's settings. Every field carries its help, from which ``editkit eval`` makes its options
    (``edits_per_step`` -> ``--edits-per-step``); mappings (``settings``, ``guard``) are given as KEY=VALUE
    pairs there. Values are checked on construction (:meth:`validate`)."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "model name or folder"})
    method: str = field(default="rome", metadata={"help": "editing method"})
    label: str | None = field(default=None, metadata={"help": "the run's name in reports (default: the method's name)"})
    data: str = field(default="", metadata={"help": "data file (format detected, or --format)"})
    out: str = field(default="", metadata={"help": "results JSON file"})
    format: str | None = field(default=None, metadata={"help": "the data file's format"})
    limit: int | None = field(default=None, metadata={"help": "use the first N cases"})
    sample: int | None = field(
        default=None,
        metadata={"help": "use N cases drawn at random (seeded by --seed) from those read, kept in file order"},
    )
    shuffle: int | None = field(
        default=None,
        metadata={"help": "put the cases read (after --limit and --sample) in a random order seeded by this number"},
    )
    case_range: str | None = field(
        default=None,
        metadata={
            "help": "batch: START:END: edit only the groups whose first case is at one of these positions (from "
            "0, after --limit, --sample and --shuffle); the unedited model is scored on all. One shard of a sweep"
        },
    )
    protocol: Literal["batch", "sequential"] = field(
        default="batch",
        metadata={"help": "batch: groups of edits, each on the unedited model; sequential: edits accumulate"},
    )
    edits_per_step: list[int] = field(
        default_factory=lambda: [1],
        metadata={"help": "batch: comma-separated k's (edits applied together); sequential: edits per step"},
    )
    max_groups: int | None = field(default=None, metadata={"help": "batch: at most this many groups of k edits per k"})
    distinct_subjects: bool = field(
        default=False,
        metadata={"help": "batch: no two edits of a group about the same subject (batch.edit_groups)"},
    )
    prefill: str | None = field(
        default=None,
        metadata={
            "help": "batch, memory editors: a data file of other edits put in the memory first (distractors; those "
            "sharing a case id, prompt or subject with the run's cases are left out)"
        },
    )
    prefill_limit: int | None = field(default=None, metadata={"help": "use the first N distractors of --prefill"})
    every: int = field(default=20, metadata={"help": "sequential: evaluate retention and downstream every N edits"})
    downstream: list[str] = field(
        default_factory=list, metadata={"help": "sequential: comma-separated tasks (sst2,mrpc,rte,cola)"}
    )
    downstream_data: str | None = field(default=None, metadata={"help": "folder with the tasks' <task>.jsonl files"})
    downstream_n: int = field(default=200, metadata={"help": "examples per downstream task"})
    state: str | None = field(
        default=None, metadata={"help": "sequential: folder for resumable state (default: beside the results file)"}
    )
    guard: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "sequential, weight editors: the edit guard's settings (GuardConfig's, plus canary: the "
            "canary tasks, default [sst2] when downstream_data is given, and canary_n: examples per task, "
            "default 32); None: off"
        },
    )
    settings: dict[str, Any] = field(default_factory=dict, metadata={"help": "the method's settings"})
    seed: int = field(default=0, metadata={"help": "seed of the downstream and canary examples' and --sample's draws"})
    batch_size: int = field(default=16, metadata={"help": "prompts per forward pass when scoring"})
    device: str | None = field(default=None, metadata={"help": "torch device of the model (default: where it loads)"})
    # Editing SmolLM2 gains little from a second thread, so two runs side by side with one thread each finish
    # sooner than one after the other with two
    threads: int | None = field(
        default=None, metadata={"help": "torch threads (default: one per core; two runs side by side: 1 each)"}
    )
    judge_tokens: int | None = field(
        default=None,
        metadata={
            "help": "batch, ConvSent sentiment edits: also answer each question in scope with this many greedy "
            "tokens before and after the edit and judge their sentiment (es_sent_judged); None: off"
        },
    )
    judge: str | None = field(
        default=None,
        metadata={"help": "the sentiment judge's folder (`editkit train judge`; default: the one packaged)"},
    )
    judge_cue: str = field(
        default="",
        metadata={
            "help": "text appended to each question before the judged generation (e.g. ' I think': a base model "
            "ends the text after a bare question)"
        },
    )
    probe_kinds: list[str] = field(
        default_factory=list,
        metadata={
            "help": "batch: score only probes of these kinds (edit, rephrase, hard_in, neighborhood, out; default "
            "all); e.g. out with --judge-tokens judges ConvSent generations without its responses' likelihoods"
        },
    )
    skip_invalid: bool = field(
        default=False, metadata={"help": "leave malformed records out (listed in the results) instead of failing"}
    )

    @classmethod
    def build(cls, yaml_path: str | None = None, **overrides: Any) -> RunConfig:
        """Defaults, then the YAML file, then the non-None ``overrides``; values are checked (unknown keys and
        wrong types by :meth:`from_dict`, then :meth:`validate`). A list may be given as a comma-separated string
        (``edits_per_step`` also as one number); ``settings`` and ``guard`` merge with the file's, key by key."""
        values = read_yaml(Path(yaml_path)) if yaml_path else {}
        given = {k: v for k, v in overrides.items() if v is not None}
        for source in (values, given):
            for key in MAPPINGS:
                if not isinstance(source.get(key), dict | None):
                    raise ConfigError(f"{cls.__name__}.{key}: expected a mapping of settings, got {source[key]!r}")
        for key in MAPPINGS:
            if key in given:
                given[key] = {**(values.get(key) or {}), **given[key]}
        values.update(given)
        for name, hint in typing.get_type_hints(cls).items():
            value = values.get(name)
            if typing.get_origin(hint) is list and isinstance(value, str | int) and not isinstance(value, bool):
                values[name] = _items(value)
        return cls.from_dict(values)

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("no data file given (--data PATH)")
        if self.protocol == "sequential" and len(self.edits_per_step) != 1:
            raise ConfigError("a sequential run takes one --edits-per-step value")
        if any(k < 1 for k in self.edits_per_step) or self.every < 1 or self.downstream_n < 2:
            raise ConfigError("--edits-per-step, --every and --downstream-n must be positive")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if self.sample is not None and self.sample < 1:
            raise ConfigError(f"--sample must be at least 1, got {self.sample}")
        if self.case_range is not None:
            self.positions()
            if self.protocol != "batch":
                raise ConfigError("--case-range picks groups of the batch protocol (--protocol batch)")
        if self.prefill_limit is not None and (self.prefill is None or self.prefill_limit < 1):
            raise ConfigError("--prefill-limit N needs --prefill FILE and N of at least 1")
        if self.prefill is not None and self.protocol != "batch":
            raise ConfigError("--prefill fills the memory of the batch protocol (--protocol batch)")
        if self.distinct_subjects and self.protocol != "batch":
            raise ConfigError("--distinct-subjects groups the edits of the batch protocol (--protocol batch)")
        if self.downstream and self.protocol != "sequential":
            raise ConfigError("downstream evaluation runs in the sequential protocol (--protocol sequential)")
        if self.downstream and not self.downstream_data:
            raise ConfigError("--downstream needs --downstream-data DIR (a folder with sst2.jsonl, mrpc.jsonl, ...)")
        if self.judge_tokens is not None and (self.judge_tokens < 1 or self.protocol != "batch"):
            raise ConfigError("--judge-tokens must be at least 1 and judges generations in the batch protocol")
        if (self.judge is not None or self.judge_cue) and self.judge_tokens is None:
            raise ConfigError("--judge and --judge-cue go with --judge-tokens N; give it too")
        known = [k.value for k in ProbeKind]
        unknown = [k for k in self.probe_kinds if k not in known]
        if unknown:
            raise ConfigError(f"--probe-kinds: unknown kind {unknown[0]!r}; the kinds are {', '.join(known)}")
        if self.probe_kinds and self.protocol != "batch":
            raise ConfigError("--probe-kinds chooses what the batch protocol scores (--protocol batch)")
        if self.guard is not None:
            if self.protocol != "sequential":
                raise ConfigError("the edit guard runs in the sequential protocol (--protocol sequential)")
            if self.guard.get("canary") and not self.downstream_data:
                raise ConfigError("guard canary tasks need --downstream-data DIR")

    def positions(self) -> tuple[int, int] | None:
        """``case_range`` as (start, end), or ``None`` for all cases."""
        if self.case_range is None:
            return None
        start, sep, end = self.case_range.partition(":")
        try:
            first, stop = int(start), int(end)
        except ValueError:
            first, stop = -1, -1
        if not sep or first < 0 or stop <= first:
            raise ConfigError(f"--case-range must be START:END with 0 <= START < END, got {self.case_range!r}")
        return first, stop


def config_of_results(results: dict[str, Any], config: str | Path | None = None) -> dict[str, Any]:
    """How a results file's run was made (:meth:`RunConfig.to_dict`): its own ``run`` block, else (the partial
    results of a run still going on, which carry none) the given config file, which must name the run's
    method."""
    if "run" in results:
        made: dict[str, Any] = results["run"]
        return made
    if config is None:
        raise ValidationError("the results do not say how the run was made (a run in progress?): give its config")
    cfg = RunConfig.build(str(config)).to_dict()
    if cfg["method"] != results["method"]:
        raise ValidationError(f"{config} configures {cfg['method']} edits, not the run's {results['method']}")
    return cfg


MATRIX_RUN_KEYS = frozenset({"label", "method", "settings", "limit", "edits_per_step", "max_groups"})


def matrix_configs(path: str | Path) -> list[RunConfig]:
    """The batch-protocol RunConfig of every (data set, run) pair of a matrix file, in file order; results go to
    ``OUT_DIR/DATASET_LABEL.json``. A matrix (YAML) holds ``out_dir``, optional ``model``, ``edits_per_step``,
    ``max_groups`` and ``distinct_subjects``, ``datasets`` (name -> ``{data, format, limit, sample}``; ``format``:
    a named one, else detected) and ``runs`` (each
    ``{label, method}`` with optional ``settings``, ``limit`` (the lower of the run's and the data set's applies),
    ``edits_per_step``, ``max_groups``)."""
    matrix = read_yaml(Path(path))
    for key in ("out_dir", "datasets", "runs"):
        if not matrix.get(key):
            raise ConfigError(f"{path}: the matrix needs {key!r}")
    configs = []
    for name, ds in matrix["datasets"].items():
        for r in matrix["runs"]:
            unknown = sorted(set(r) - MATRIX_RUN_KEYS)
            if unknown or "label" not in r or "method" not in r:
                raise ConfigError(
                    f"{path}: run {r.get('label')!r} needs label and method and takes only {sorted(MATRIX_RUN_KEYS)}"
                    + (f" (unknown: {unknown})" if unknown else "")
                )
            limits = [v for v in (ds.get("limit"), r.get("limit")) if v is not None]
            configs.append(
                RunConfig.build(
                    None,
                    model=matrix.get("model"),
                    method=r["method"],
                    label=r["label"],
                    data=ds.get("data"),
                    format=ds.get("format"),
                    limit=min(limits) if limits else None,
                    sample=ds.get("sample"),
                    protocol="batch",
                    edits_per_step=r.get("edits_per_step", matrix.get("edits_per_step")),
                    max_groups=r.get("max_groups", matrix.get("max_groups")),
                    distinct_subjects=matrix.get("distinct_subjects"),
                    settings=r.get("settings"),
                    out=str(Path(matrix["out_dir"]) / f"{name}_{r['label']}.json"),
                )
            )
    return configs


def _items(value: str | int) -> list[str]:
    """A comma-separated list (or one number) as its items."""
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _guard(config: RunConfig, evaluated: dict[str, list[dict[str, Any]]]) -> EditGuard:
    """The run's edit guard; its canary examples are drawn with another seed and never among the examples the
    run evaluates downstream."""
    from editkit.evaluation.downstream import load_examples
    from editkit.evaluation.guard import EditGuard, GuardConfig

    settings = dict(config.guard or {})
    tasks = settings.pop("canary", ["sst2"] if config.downstream_data else [])
    given = settings.pop("canary_n", 32)
    if isinstance(tasks, str):
        tasks = _items(tasks)
    try:
        n = int(given)
    except (TypeError, ValueError):
        n = 0
    if n < 2 or isinstance(given, float | bool):
        raise ConfigError(f"guard canary_n must be an integer of at least 2, got {given!r}")
    canary = {}
    for t in tasks:
        drawn = load_examples(Path(config.downstream_data or ".") / f"{t}.jsonl", t, n=4 * n, seed=config.seed + 1)
        unseen = [e for e in drawn if e not in evaluated.get(t, [])]
        zeros, ones = ([e for e in unseen if e["label"] == label] for label in (0, 1))
        canary[t] = zeros[: n // 2] + ones[: n - n // 2]
    return EditGuard(GuardConfig.from_dict(settings), canary=canary, batch_size=config.batch_size)


def _judge(config: RunConfig, cases: Sequence[EditCase]) -> GenerationJudge | None:
    """The run's generation judge (``--judge-tokens``), checked against the cases before the model loads."""
    if config.judge_tokens is None:
        return None
    from editkit.evaluation.judged import GenerationJudge, judged_cases
    from editkit.training.judge import load_judge

    judged_cases(cases)
    return GenerationJudge(load_judge(config.judge), config.judge_tokens, config.batch_size, config.judge_cue)


def run_cases(config: RunConfig) -> Dataset:
    """The run's cases: the file's first ``limit``, then ``sample`` of them (seeded), then ``shuffle``d."""
    from editkit.data.formats import load_cases

    dataset = load_cases(config.data, format=config.format, limit=config.limit, skip_invalid=config.skip_invalid)
    if config.sample is not None and config.sample < len(dataset.cases):
        kept = sorted(random.Random(config.seed).sample(range(len(dataset.cases)), config.sample))
        dataset = dataclasses.replace(dataset, cases=[dataset.cases[i] for i in kept])
    if config.shuffle is not None:
        shuffled = list(dataset.cases)
        random.Random(config.shuffle).shuffle(shuffled)
        dataset = dataclasses.replace(dataset, cases=shuffled)
    return dataset


def check_subjects(editor: Editor, cases: Sequence[EditCase]) -> None:
    """Refuse, in one line, cases without a subject for an editor that locates one."""
    if editor.capabilities.needs_subject:
        unlocated = [c.request.case_id for c in cases if not c.request.subject]
        if unlocated:
            raise ValidationError(
                f"{editor.name} needs a subject in every edit; {len(unlocated)} cases have none "
                f"(first: {unlocated[0]}); choose other data or a method that does not locate"
            )


def run(config: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the evaluation ``config`` describes and write its results JSON (atomically). Returns the results."""
    import torch

    from editkit.editors import check_edit_kinds, create_editor
    from editkit.evaluation.batch import batch_edits
    from editkit.evaluation.downstream import get_task, load_examples
    from editkit.evaluation.prefill import load_prefill
    from editkit.evaluation.runstate import RunState
    from editkit.evaluation.sequential import sequential_edits
    from editkit.models.zoo import check_model_name, load

    if not config.out:
        raise ConfigError("no results file given (--out FILE.json)")
    out = Path(config.out)
    check_writable(out, "--out")
    check_model_name(config.model)
    editor = create_editor(config.method, config.settings)  # bad method names fail before any loading
    state = config.state or str(out.with_suffix("")) + ".state"
    if config.protocol == "sequential" and editor.capabilities.storage == "weights":
        check_writable(state, "state folder (--state)", folder=True)
        RunState(Path(state)).saved_results()  # a damaged state fails here, before the model loads
    elif config.state:
        why = (
            f"{editor.name} keeps its edits in a memory (its setting memory=FILE)"
            if editor.capabilities.storage != "weights"
            else "this is a batch run"
        )
        raise ValidationError(f"--state holds the resumable state of a sequential run of a weight editor; {why}")
    for t in config.downstream:
        get_task(t)
    dataset = run_cases(config)
    tasks = {
        t: load_examples(Path(config.downstream_data or ".") / f"{t}.jsonl", t, n=config.downstream_n, seed=config.seed)
        for t in config.downstream
    }
    check_edit_kinds(editor, [r for c in dataset.cases for r in c.requests])  # statements: refused before loading
    check_subjects(editor, dataset.cases)
    if config.prefill is not None and editor.capabilities.storage == "weights":
        raise ValidationError(f"--prefill fills an edit memory; {editor.name} edits weights (use serac, rp or lu)")
    prefill = (
        load_prefill(config.prefill, config.prefill_limit, dataset.cases, config.data, format=config.format)
        if config.prefill is not None
        else None
    )
    guard = _guard(config, tasks) if config.guard is not None else None
    judge = _judge(config, dataset.cases)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    lm = load(config.model, device=config.device)
    if config.protocol == "batch":
        results = batch_edits(
            lm,
            editor,
            dataset.cases,
            config.edits_per_step,
            max_groups=config.max_groups,
            distinct_subjects=config.distinct_subjects,
            batch_size=config.batch_size,
            progress=progress,
            datasets=[dataset],
            prefill=prefill.requests if prefill else (),
            prefill_summary=prefill.summary if prefill else None,
            reference_cache=cache_dir() / "references",
            span=config.positions(),
            judge=judge,
            kinds=[ProbeKind(k) for k in config.probe_kinds] or tuple(ProbeKind),
        )
        if judge is not None:
            from editkit.training.judge import judge_record

            results["judge"] = {
                **judge_record(config.judge),
                "max_new_tokens": config.judge_tokens,
                "cue": config.judge_cue,
            }
        results["run"] = config.to_dict()
    else:
        results = sequential_edits(
            lm,
            editor,
            dataset.cases,
            edits_per_step=config.edits_per_step[0],
            every=config.every,
            downstream=tasks,
            state_dir=state if editor.capabilities.storage == "weights" else None,
            batch_size=config.batch_size,
            progress=progress,
            datasets=[dataset],
            guard=guard,
            run=config.to_dict(),
        )
    results["seed"] = config.seed
    write_results_or_keep(out, json.dumps(results, indent=1))
    return results


def write_results_or_keep(out: Path, text: str) -> None:
    """Write computed results to ``out``; if that fails after all (the disk filled, the folder went away), keep
    them in the cache's runs folder and say where, rather than losing the work."""
    try:
        atomic_write(out, text)
    except OSError as exc:
        kept = cache_dir() / "runs" / f"unwritten-{time.strftime('%Y%m%dT%H%M%S')}-{out.name}"
        kept.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(kept, text)
        raise ValidationError(f"could not write {out} ({exc.strerror or exc}); results kept in {kept}") from None
