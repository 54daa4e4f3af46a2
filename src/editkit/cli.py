"""The `editkit` command line: a thin front end over the Python API.

Errors a user can cause (bad names, bad files, missing models) print one line and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import sys
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from editkit.configfile import parse_overrides
from editkit.errors import EditkitError, ValidationError


def _console() -> Any:
    from rich.console import Console

    # Piped output (logs, CI) would otherwise wrap tables at 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=160)


# --------------------------------------------------------------------------- models / methods / env
def cmd_models(args: argparse.Namespace) -> int:
    from rich.table import Table

    from editkit.models.zoo import MODELS, cache_dir, cache_status

    table = Table(title=f"Models (cache: {cache_dir()})")
    for col in ("name", "kind", "status", "source", "license", "description"):
        table.add_column(col)
    for spec in MODELS.values():
        table.add_row(
            spec.name,
            spec.kind,
            cache_status(spec.name),
            ", ".join(spec.packages),
            spec.license,
            spec.description,
        )
    _console().print(table)
    print("Also accepted: a local folder with a transformers model, or a Hugging Face hub id (online).")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from editkit.editors import available_methods, get_editor_class

    if args.name:
        cls = get_editor_class(args.name)
        doc = (sys.modules[cls.__module__].__doc__ or cls.name).strip().splitlines()[0]
        table = Table(title=f"{cls.name}: {doc}")
        for col in ("setting", "default", "help"):
            table.add_column(col)
        for name, default, help_text in cls.config_cls.describe():
            table.add_row(name, escape(default), escape(help_text))
        _console().print(table)
        return 0
    table = Table(title="Methods")
    for col in ("name", "edits live in", "trained parts", "batch", "needs subject", "replay", "statements"):
        table.add_column(col)
    for name in available_methods():
        caps = get_editor_class(name).capabilities
        flags = (caps.trained, caps.batch, caps.needs_subject, caps.replay, caps.free_form)
        table.add_row(name, caps.storage, *map(str, flags))
    _console().print(table)
    print("Settings of one method: editkit methods NAME")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    import torch
    import transformers

    import editkit
    from editkit.models.zoo import cache_dir

    info = {
        "editkit": editkit.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda_available": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cache_dir": str(cache_dir()),
        "offline": os.environ.get("HF_HUB_OFFLINE", "0"),
    }
    for k, v in info.items():
        print(f"{k:>16}: {v}")
    return 0


# --------------------------------------------------------------------------- edit / quickstart
def _answers(lm: Any, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    return [a.strip() for a in lm.generate(prompts, max_new_tokens, stop_at_newline=True)]


def _positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _spaced(answer: str) -> str:
    return answer if answer.startswith(" ") else " " + answer


def _load_request(args: argparse.Namespace) -> Any:
    from editkit.edits import EditRequest
    from editkit.files import read_json

    if args.statement is not None:
        fields = ("prompt", "subject", "target", "target_true", "file")
        given = [f"--{n.replace('_', '-')}" for n in fields if getattr(args, n)]
        if given:
            raise ValidationError(f"--statement is the whole edit; drop {', '.join(given)} or drop --statement")
        if not args.ask:
            raise ValidationError("--statement needs at least one --ask PROMPT to answer before and after the edit")
        return EditRequest.statement(args.statement)
    if args.file:
        given = [f"--{n.replace('_', '-')}" for n in ("prompt", "subject", "target", "target_true") if getattr(args, n)]
        if given:
            raise ValidationError(f"--file holds the whole edit request; drop {', '.join(given)} or drop --file")
        path = Path(args.file)
        data = read_json(path, "edit file")
        if not isinstance(data, dict):
            raise ValidationError(f"{path} must hold one JSON object (an edit request), not {type(data).__name__}")
        return EditRequest.from_dict(data)
    if not args.prompt or args.target is None:
        raise ValidationError(
            "give --prompt and --target (and --subject for locate-and-edit methods), --file, or --statement"
        )
    true = _spaced(args.target_true) if args.target_true else None
    return EditRequest(prompt=args.prompt, subject=args.subject, target_new=_spaced(args.target), target_true=true)


def _answered_by(explained: dict[str, Any]) -> str:
    """What answered a prompt, from :meth:`EditService.answer`'s explanation: an edit (its id and descriptor) or
    the base model (saying so when ``defer_kl`` sent the input back from an edit)."""
    if explained["answered_by"] != "edit":
        if "deferred_edit_id" in explained:
            kl = explained["counterfactual_kl"]
            return f"base model (deferred from edit {explained['deferred_edit_id']}: KL {kl:.2f})"
        return "base model"
    return f"edit {explained['edit_id']}: {explained['descriptor'][:60]}"


def cmd_edit(args: argparse.Namespace) -> int:
    from rich.table import Table

    from editkit.editors import check_edit_kinds, create_editor
    from editkit.files import check_writable
    from editkit.models.zoo import check_model_name, load
    from editkit.service import EditService

    editor = create_editor(args.method, parse_overrides(args.set))
    request = _load_request(args)
    check_edit_kinds(editor, [request])  # fail before loading (maybe fetching) the model
    if editor.capabilities.needs_subject:
        request.require_subject(editor.name)
    check_model_name(args.model)
    if args.save:
        check_writable(args.save, "--save", folder=True)
    judge = None
    if args.judge is not None:
        from editkit.evaluation.judged import judge_texts
        from editkit.training.judge import load_judge

        judge = load_judge(args.judge or None)
    lm = load(args.model, device=args.device)
    service = EditService(lm, editor)
    prompts = [*([] if request.is_statement else [request.text]), *args.ask]
    before = _answers(service, prompts, args.max_new_tokens)
    applied = service.apply([request])
    handle, seconds = applied.handle, applied.seconds
    after = service.answer(prompts, args.max_new_tokens, stop_at_newline=True)
    edit = f"{request.text!r} -> {request.target_new!r}"
    if request.is_statement:
        edit = f"statement {request.descriptor!r}"
    table = Table(title=f"{editor.name} on {lm.name}: {edit} ({seconds:.1f} s)")
    memory = service.model is not lm  # a memory editor: say which edit answered each prompt
    judged = ("P(positive) before", "after") if judge else ()
    for col in ("prompt", "before", "after", *(("answered by", "scope score") if memory else ()), *judged):
        table.add_column(col)
    answers = [a.strip() for a, _ in after]
    positive = list(zip(judge_texts(judge, before), judge_texts(judge, answers), strict=True)) if judge else []
    for i, (p, b, a, (_, why)) in enumerate(zip(prompts, before, answers, after, strict=True)):
        routed = (_answered_by(why), f"{why.get('scope_score', why.get('best_scope_score', 0.0)):.3f}")
        scores = tuple("(blank)" if x is None else f"{x:.3f}" for x in positive[i]) if judge else ()
        table.add_row(p, b, a, *(routed if memory else ()), *scores)
    _console().print(table)
    if handle.info.get("not_taken"):
        print(f"warning: the edit did not take: {request.target_new!r} is still below {request.target_true!r}")
    if args.save:
        print(f"saved the edit to {handle.save(args.save)} (load it with EditHandle.load)")
    return 0


def _step(text: str) -> None:
    """A line on stderr as each step of a long command starts, so that a slow machine never looks hung."""
    print(f"... {text}", file=sys.stderr, flush=True)


def cmd_quickstart(args: argparse.Namespace) -> int:
    from rich.table import Table

    from editkit.data import demo_cases
    from editkit.editors import create_editor, get_editor_class
    from editkit.edits import ProbeKind
    from editkit.models.zoo import load

    console = _console()
    timings: list[tuple[str, float]] = []
    corpus = args.corpus or os.environ.get("EDITKIT_CORPUS")
    takes_corpus = any(name == "corpus" for name, _, _ in get_editor_class(args.method).config_cls.describe())
    editor = create_editor(args.method, {"corpus": corpus} if corpus and takes_corpus else {})
    t0 = time.perf_counter()
    _step(f"loading {args.model} (fetched and converted on first use)")
    lm = load(args.model, device=args.device)  # fetches and converts on first use, verifies the cache after
    timings.append(("load model (fetch and convert on first use)", time.perf_counter() - t0))
    if takes_corpus and not corpus:
        console.print(
            f"[yellow]no --corpus given: {editor.name} runs without corpus key statistics (C = I); pass a text "
            "file, e.g. WikiText, for the full method[/yellow]"
        )
    cases = demo_cases()[: args.limit]
    rows = [
        (p.kind.value, p.prompt)
        for case in cases
        for p in (case.of_kind(ProbeKind.EDIT)[0], case.of_kind(ProbeKind.REPHRASE)[0], case.of_kind(ProbeKind.OUT)[0])
    ]
    prompts = [prompt for _, prompt in rows]
    t0 = time.perf_counter()
    _step(f"answering {len(prompts)} prompts before the edits")
    before = _answers(lm, prompts, args.max_new_tokens)
    timings.append((f"answer {len(prompts)} prompts (before)", time.perf_counter() - t0))
    t0 = time.perf_counter()
    _step(f"preparing {editor.name} (key statistics and context templates on first use)")
    editor.prepare(lm, progress=True)
    timings.append(
        (f"prepare {editor.name} (e.g. key statistics; cached after the first run)", time.perf_counter() - t0)
    )
    handles = []
    for i, case in enumerate(cases, 1):
        t0 = time.perf_counter()
        r = case.request
        _step(f"edit {i} of {len(cases)}: {r.text}{r.target_true or ''} -> {r.target_new.strip()}")
        handles.append(editor.apply(lm, [r]))
        timings.append(
            (
                f"{editor.name}: {r.text}{r.target_true or ''} -> {r.target_new.strip()}",
                time.perf_counter() - t0,
            )
        )
    t0 = time.perf_counter()
    _step(f"answering {len(prompts)} prompts after the edits")
    after = _answers(handles[-1].model, prompts, args.max_new_tokens)  # a memory editor routes
    timings.append((f"answer {len(prompts)} prompts (after)", time.perf_counter() - t0))

    table = Table(title=f"{editor.name} on {lm.name}: {len(cases)} edits applied one after another")
    for col in ("probe", "prompt", "before", "after"):
        table.add_column(col)
    for (kind, prompt), b, a in zip(rows, before, after, strict=True):
        table.add_row(kind, prompt, b, a, end_section=kind == "out")
    console.print(table)
    times = Table(title="Time of each step")
    times.add_column("step")
    times.add_column("seconds", justify="right")
    for step, sec in timings:
        times.add_row(step, f"{sec:.1f}")
    console.print(times)
    for h in reversed(handles):
        h.rollback()
    check = _answers(lm, prompts[:1], args.max_new_tokens)[0]
    console.print(f"Rolled back all edits: {prompts[0]!r} -> {check!r} (before: {before[0]!r})")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from collections import Counter

    from rich.table import Table

    from editkit.data.formats import FORMATS, load_cases

    if not args.path:
        table = Table(title="Data formats (editkit data PATH validates a file)")
        table.add_column("format")
        table.add_column("what it is")
        for fmt in FORMATS.values():
            table.add_row(fmt.name, fmt.description)
        _console().print(table)
        return 0
    ds = load_cases(args.path, format=args.format, skip_invalid=True)
    if len(ds.skipped) * 2 > ds.n_records and not args.skip_invalid:
        raise ValidationError(
            f"{ds.path}: {len(ds.skipped)} of {ds.n_records} records are invalid (first: {ds.skipped[0][1]}); "
            f"pass --skip-invalid to read the {len(ds.cases)} others"
        )
    kinds = Counter(p.kind.value for case in ds.cases for p in case.probes)
    located = sum(case.request.subject is not None for case in ds.cases)
    print(f"{ds.path}: format {ds.format}, {len(ds.cases)} cases from {ds.n_records} records, sha256 {ds.sha256}")
    print(f"probes: {', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}; cases with a subject: {located}")
    reasons = Counter(why.split(", ", 1)[-1] for _, why in ds.skipped)  # without "FILE: record N"
    for why, n in reasons.most_common():
        print(f"{n} invalid record(s): {why}")
    for index, why in ds.skipped[:10]:
        print(f"invalid record {index}: {why}")
    if len(ds.skipped) > 10:
        print(f"... and {len(ds.skipped) - 10} more invalid records")
    return 1 if ds.skipped else 0


# --------------------------------------------------------------------------- trace
def _add_trace_parser(sub: Any) -> None:
    from editkit.models.zoo import DEFAULT_MODEL

    p = sub.add_parser(
        "trace",
        help="causal tracing of a fact (ROME), or its average over known facts",
        description="One fact: --prompt and --subject (--answer defaults to the greedy next token); writes --out "
        "(JSON) and a PNG of token x layer heatmaps beside it. Many: --known FILE (ROME's known_1000.json) "
        "--limit N: the average indirect effect at the subject's last token by layer; resumable (state in the "
        "cache). Settings (--set): " + ", ".join(f.name for f in dataclasses.fields(_trace_config())),
    )
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--prompt")
    p.add_argument("--subject")
    p.add_argument("--answer", help="the true answer (its first token is traced)")
    p.add_argument("--known", help="known-facts JSON file: trace the average over its facts")
    p.add_argument("--limit", type=int, default=100, help="with --known: the first N facts (default 100)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="trace setting")
    p.add_argument(
        "--neurons", action="store_true", help="knowledge neurons: integrated-gradient attributions (Dai et al.)"
    )
    p.add_argument("--steps", type=int, default=20, help="with --neurons: integrated-gradient steps (default 20)")
    p.add_argument("--top", type=int, default=10, help="with --neurons: neurons shown (default 10)")
    p.add_argument("--out", required=True, help="results JSON (the PNG is written beside it)")
    p.set_defaults(fn=cmd_trace)


def _trace_config() -> Any:
    from editkit.locating.trace import TraceConfig

    return TraceConfig


def cmd_trace(args: argparse.Namespace) -> int:
    config = _trace_config().from_dict(parse_overrides(args.set))
    out = Path(args.out)
    if out.suffix != ".json":
        raise ValidationError(f"--out must name a .json file, got {out}")
    from editkit.files import check_writable

    check_writable(out, "--out")
    if args.known:
        return _trace_average(args, config, out)
    if args.neurons:
        return _trace_neurons(args, out)
    if not args.prompt or not args.subject:
        raise ValidationError("give --prompt and --subject (or --known FILE for the average over known facts)")
    from editkit.locating.output import header, plot_trace, write_json
    from editkit.locating.trace import Tracer
    from editkit.models.zoo import load

    lm = load(args.model)
    start = time.perf_counter()
    tracer = Tracer(lm, args.prompt, args.subject, config, answer=args.answer)
    result = tracer.trace()
    seconds = time.perf_counter() - start
    command = " ".join(["editkit", *sys.argv[1:]])
    write_json(out, {**header(lm, command, {"seconds": seconds}), **result.to_dict()})
    plot_trace(result, out.with_suffix(".png"))
    s1 = result.subject_range[1]
    print(f"{args.prompt!r} -> {result.answer!r}: p clean {result.p_clean:.4f}, corrupted {result.p_corrupted:.4f}")
    for kind in result.scores:
        row = result.effect(kind)[s1 - 1]
        print(
            f"{kind:>6} at the last subject token {result.tokens[s1 - 1]!r}: peak effect {float(row.max()):.4f} "
            f"at layer {int(row.argmax())}"
        )
    print(f"{seconds:.1f} s; written {out} and {out.with_suffix('.png')}")
    return 0


def _trace_neurons(args: argparse.Namespace, out: Path) -> int:
    from editkit.locating.output import header, neuron_report, write_json
    from editkit.models.zoo import load

    if not args.prompt or args.steps < 1 or args.top < 1:
        raise ValidationError("--neurons needs --prompt (and --steps, --top >= 1)")
    lm = load(args.model)
    report = neuron_report(lm, args.prompt, args.answer, args.steps, args.top)
    write_json(out, {**header(lm, " ".join(["editkit", *sys.argv[1:]]), {}), **report})
    print(f"{args.prompt!r} -> {report['answer']!r}: top neurons by integrated gradients ({args.steps} steps)")
    for row in report["top"]:
        print(f"  layer {row['layer']:>3} neuron {row['neuron']:>6}: {row['attribution']:.5f}")
    n_above = len(report["above_0.2_of_max"])
    print(f"{n_above} neurons above 0.2 x the largest; {report['seconds']:.1f} s; written {out}")
    return 0


def _trace_average(args: argparse.Namespace, config: Any, out: Path) -> int:
    from editkit.files import file_sha256
    from editkit.locating.average import average_effects, load_known, state_path, traced_facts
    from editkit.locating.output import header, plot_average, write_json
    from editkit.models.zoo import cache_dir, load
    from editkit.progress import progress_bar

    facts = load_known(args.known)
    if args.limit < 1:
        raise ValidationError("--limit must be >= 1")
    lm = load(args.model)
    sha = file_sha256(args.known)
    state = state_path(lm, config, sha, cache_dir())
    n = min(args.limit, len(facts))
    with progress_bar(n, "tracing known facts") as bar:
        records = list(traced_facts(lm, facts, config, state, n, bar))
    summary = average_effects(records, config.kinds)
    command = " ".join(["editkit", *sys.argv[1:]])
    data = {"path": args.known, "sha256": sha, "limit": n, "state": str(state)}
    write_json(out, {**header(lm, command, {"data": data, "config": config.to_dict()}), **summary})
    if summary["known"]:
        plot_average(summary, lm.name, out.with_suffix(".png"))
    print(f"{summary['known']} of {n} facts known to {lm.name} (greedy next token = the attribute's first token)")
    for kind, stats in summary["kinds"].items():
        print(
            f"{kind:>6}: peak average indirect effect at the last subject token: layer {stats['peak_layer']} "
            f"({max(stats['mean_effect']):.4f})"
        )
    print(f"written {out}" + (f" and {out.with_suffix('.png')}" if summary["known"] else ""))
    return 0


# --------------------------------------------------------------------------- eval / report
def _config_options(cls: type, skip: tuple[str, ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    """``(field name, add_argument keywords)`` for every field of the typed config ``cls`` that an option sets
    (``edits_per_step`` -> ``--edits-per-step``), with the field's help and default. Every option defaults to
    None, "not given": the config file's value (or the field's default) stands. Booleans are switches, Literal
    fields take one of their values, lists are comma-separated (the config splits them); mappings (dict fields)
    have no option of their own: commands take them as KEY=VALUE pairs. Fields named in ``skip`` get none either."""
    options = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: the option takes an X
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
        if hint is dict or origin is dict or f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        text = f.metadata.get("help", "")
        if shown not in (None, "") and shown is not False:
            text += f" (default {shown})"
        kwargs: dict[str, Any] = {"default": None, "help": text}
        if hint is bool:
            kwargs["action"] = "store_true"
        elif origin is typing.Literal:
            kwargs["choices"] = list(typing.get_args(hint))
        elif hint in (int, float):
            kwargs["type"] = hint
        options.append((f.name, kwargs))
    return options


def _add_eval_parser(sub: Any) -> None:
    from editkit.evaluation.runner import RunConfig

    p = sub.add_parser("eval", help="evaluate a method on a data set (batch or sequential protocol)")
    p.add_argument("--config", help="YAML file with run settings (command-line options override it)")
    for name, kwargs in _config_options(RunConfig):
        p.add_argument("--" + name.replace("_", "-"), **kwargs)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method setting")
    p.add_argument(
        "--guard", action="store_true", help="sequential, weight editors: reject edits that would disable the model"
    )
    p.add_argument(
        "--guard-set", action="append", default=[], metavar="KEY=VALUE", help="guard setting (implies --guard)"
    )
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser(
        "residuals",
        help="optimise a batch run's target residuals (rome, memit, alphaedit) into its residual_cache ahead of it, "
        "one part of them: processes or machines sharing the folder split a large run",
    )
    p.add_argument("--config", help="the run's YAML file (as for editkit eval; options override it)")
    for name, kwargs in _config_options(RunConfig, skip=("out",)):  # it writes residuals, not results
        p.add_argument("--" + name.replace("_", "-"), **kwargs)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method setting")
    p.add_argument("--part", type=_part, default=(1, 1), metavar="I/N", help="the I-th of N equal parts (default 1/1)")
    p.add_argument(
        "--count",
        action="store_true",
        help="optimise nothing: how many of the run's residuals are in the folder, in all and in each of the N parts",
    )
    p.set_defaults(fn=cmd_residuals, guard=False, guard_set=[])


def _part(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):
        raise argparse.ArgumentTypeError(f"expected I/N with 1 <= I <= N, got {text!r}")
    return int(i), int(n)


def _run_config(args: argparse.Namespace) -> Any:
    """The run the options describe (checked; its results file is checked by the command that writes it)."""
    from editkit.evaluation.runner import RunConfig

    options = {name: getattr(args, name, None) for name, _ in _config_options(RunConfig)}
    return RunConfig.build(
        args.config,
        **options,
        settings=parse_overrides(args.set) or None,
        guard=parse_overrides(args.guard_set) if args.guard or args.guard_set else None,
    )


def cmd_residuals(args: argparse.Namespace) -> int:
    from editkit.residuals import cache_residuals, count_residuals

    if args.count:
        counted = count_residuals(_run_config(args), args.part[1])
        print(f"{counted['found']} of the run's {counted['requests']} residuals are in {counted['folder']}")
        if len(counted["parts"]) > 1:
            for part in counted["parts"]:
                print(f"  part {part['part']}: {part['found']} of {part['in_part']}")
        return 0
    done = cache_residuals(_run_config(args), args.part)
    print(
        f"part {done['part']}: {done['in_part']} of the run's {done['requests']} residuals, {done['found']} already in "
        f"the folder at the start, the rest optimised or read in {done['seconds']:.1f} s -> {done['folder']}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from editkit.evaluation.runner import run

    config = _run_config(args)
    results = run(config)
    agg = results["aggregates"]
    shown = ", ".join(f"{k} {v:.3f}" for k, v in agg.items() if isinstance(v, float) and not k.startswith("unedited"))
    print(f"{results['method']} on {results['model']}, {results['n_cases']} cases: {shown}")
    print(f"results written to {config.out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from editkit.sweep.grid import expand, load_sweep

    sweep = load_sweep(args.config)
    runs = expand(sweep)
    tasks = sum(r.tasks for r in runs)
    print(f"{len(runs)} runs, {tasks} tasks ({sweep.threads} threads, {sweep.gpus:g} GPUs each) -> {sweep.out_dir}")
    if args.dry_run:
        from editkit.sweep.execute import status_of

        for r in runs:
            c = r.config
            order = "file order" if c.shuffle is None else f"shuffle {c.shuffle}"
            split = ", ".join(s.case_range or "" for s in r.shards) if r.shards else f"one task ({r.why})"
            print(f"  {r.name}: {c.method} on {c.model}, {r.n_cases} cases ({order}), seed {c.seed}, {c.protocol}")
            print(f"    {split} -> {c.out} ({status_of(r, sweep.snapshot_dir)})")
        return 0
    if args.snapshot:
        from editkit.sweep.execute import is_done
        from editkit.sweep.snapshot import take_snapshots

        if not sweep.snapshot_dir:
            raise ValidationError(f"{args.config} names no snapshot_dir (a folder for the snapshots, to commit)")
        for line in take_snapshots(runs, sweep.snapshot_dir, is_done) or ["no unfinished sequential run to snapshot"]:
            print(line)
        return 0
    from editkit.sweep.execute import execute

    outcome = execute(sweep, runs, address=args.address, max_parallel=args.max_parallel, on_event=print)
    print(
        f"{len(outcome.finished)} runs finished, {len(outcome.skipped)} done before, {len(outcome.failed)} failed "
        f"in {outcome.seconds:.1f} s"
    )
    for name, why in outcome.failed:
        print(f"editkit: run {name} failed: {why}", file=sys.stderr)
    return 1 if outcome.failed else 0


def cmd_train(args: argparse.Namespace) -> int:
    from editkit.configfile import read_yaml
    from editkit.training.registry import create_trainer

    values = read_yaml(Path(args.config)) if args.config else {}
    values.update(parse_overrides(args.set))
    if args.out:
        values["out"] = args.out
    trainer = create_trainer(args.name, values)
    started = time.perf_counter()
    manifest = trainer.train()
    for name, part in manifest["parts"].items():
        print(f"{name}: {part['steps']} steps, loss {part['loss_first']:.3f} -> {part['loss_last20_mean']:.3f}")
    print(f"trained parts written to {manifest['config']['out']} in {time.perf_counter() - started:.0f} s")
    return 0


class _TrainHelp(argparse.Action):
    """``editkit train --help``: the usage, then the registered trainers (imported only when help is asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show this help, with the registered trainers")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from editkit.training.registry import available_trainers, get_trainer_class

        docs = {n: (get_trainer_class(n).__doc__ or "").strip().splitlines() for n in available_trainers()}
        parser.epilog = "trainers:\n" + "\n".join(f"  {n:<8} {doc[0] if doc else ''}" for n, doc in docs.items())
        parser.print_help()
        parser.exit()


def _add_train_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train the parts a learned editor needs (editkit train NAME --config FILE)",
        description="Train the parts a learned editor needs; a rerun with the same settings resumes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    p.add_argument("-h", "--help", action=_TrainHelp)
    p.add_argument("name", metavar="NAME", help="the trainer (listed below)")
    p.add_argument("--config", help="YAML file with the trainer's settings (unknown keys are refused)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training setting")
    p.add_argument("--out", help="folder for the trained parts (resumes a run found there)")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser(
        "pack",
        help="copy trained parts for shipping (no checkpoints, optionally float16), verified and re-recorded",
    )
    p.add_argument("source", help="folder written by `editkit train`")
    p.add_argument("dest", help="new folder (e.g. src/editkit/artifacts/NAME to ship with the package)")
    width = p.add_mutually_exclusive_group()
    width.add_argument("--float16", action="store_true", help="store floating tensors in float16 (half the size)")
    width.add_argument(
        "--int8",
        action="store_true",
        help="store large matrices as int8 rows with a scale each, the rest in float16 (about a quarter the size)",
    )
    p.add_argument(
        "--part",
        action="append",
        default=[],
        metavar="PART=FOLDER",
        help="take this part from another trained folder instead (repeatable)",
    )
    p.add_argument(
        "--defer",
        metavar="FILE",
        help="a deferral calibration of the counterfactual part (benchmarks/serac_defer_calibration.py): its cut "
        "is recorded, and SERAC's defer_judge=DEST uses it when defer_kl is not given",
    )
    p.set_defaults(fn=cmd_pack)


def cmd_pack(args: argparse.Namespace) -> int:
    from editkit.trained import pack

    parts_from = {}
    for item in args.part:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ValidationError(f"--part takes PART=FOLDER, not {item!r}")
        parts_from[name] = Path(folder)
    manifest = pack(
        Path(args.source),
        Path(args.dest),
        half=args.float16,
        int8=args.int8,
        parts_from=parts_from,
        defer=Path(args.defer) if args.defer else None,
    )
    for name, part in manifest["parts"].items():
        cut = part.get("defer")
        twin = " against the twin" if cut and cut["defer_contrast"] else ""
        judged = f", defer_kl {cut['defer_kl']:.3g}{twin}" if cut else ""
        print(f"{name}: {part['fingerprint']} (from {part['packed_from']}{judged})")
    print(f"packed to {args.dest}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from editkit.evaluation.report import write_report
    from editkit.files import check_writable

    check_writable(args.out, "--out", folder=True)
    path = write_report(args.results, args.out)
    print(f"report written to {path}")
    return 0


# --------------------------------------------------------------------------- serve
def _serve_modules() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ValidationError("editkit serve needs the serve extra: pip install 'editkit[serve]'") from None


def _serve_dir() -> Path:
    from editkit.models.zoo import cache_dir

    return cache_dir() / "serve"


def cmd_token(args: argparse.Namespace) -> int:
    _serve_modules()
    from editkit.files import check_writable
    from editkit.server.tokens import TokenBook

    path = Path(args.tokens) if args.tokens else _serve_dir() / "tokens.json"
    check_writable(path, "--tokens")
    book = TokenBook(path)
    token = book.add(args.name, args.role)
    print(f"{args.role} token {args.name!r} (stored hashed in {book.path}; shown only now):\n{token}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    _serve_modules()
    import re

    from editkit.editors import create_editor
    from editkit.evaluation.drift import edit_drift
    from editkit.evaluation.guard import EditGuard, GuardConfig
    from editkit.memory.urls import check_store_url, sqlite_path
    from editkit.models.zoo import load
    from editkit.server.app import ServeConfig, Server, serve
    from editkit.server.desk import EditDesk
    from editkit.server.journal import WeightJournal
    from editkit.server.tokens import TokenBook
    from editkit.service import EditService

    settings = parse_overrides(args.set)
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{args.model}-{args.method}")
    probe = create_editor(args.method, settings)
    memory = probe.capabilities.storage == "memory"
    if args.store and not memory:
        raise ValidationError(f"{probe.name} edits the weights: its journal is a folder (--journal), not --store")
    if (args.guard or args.guard_set) and memory:
        raise ValidationError(f"the guard checks weight edits; {probe.name} keeps its edits outside the weights")
    guard = EditGuard(GuardConfig.from_dict(parse_overrides(args.guard_set))) if args.guard or args.guard_set else None
    store = args.store or str(_serve_dir() / f"{slug}.sqlite")
    scheme = check_store_url(store) if memory else None
    sync = args.sync_seconds if args.sync_seconds is not None else (0.5 if scheme not in (None, "sqlite") else 0.0)
    config = ServeConfig(
        read_tokens=args.read_tokens,
        max_body_bytes=args.max_body_bytes,
        max_tokens=args.max_tokens,
        max_batch=args.max_batch,
        cors_origins=args.cors or "",
        sync_seconds=sync,
    )
    book = TokenBook(args.tokens or _serve_dir() / "tokens.json")
    needs_token = not any(t.role == "write" for t in book.tokens)
    if memory:
        if scheme in (None, "sqlite"):
            (Path(store) if scheme is None else sqlite_path(store)).parent.mkdir(parents=True, exist_ok=True)
        editor = create_editor(args.method, {**settings, "memory": store})
    else:
        editor = probe
    lm = load(args.model, device=args.device)
    service = EditService(lm, editor, guard=guard)
    journal = None if memory else WeightJournal(args.journal or _serve_dir() / f"{slug}-journal")
    desk = EditDesk(service, journal)
    handles = desk.restore()
    restored = len(handles)
    if guard is not None:  # the re-applied edits are the guard's accepted history
        guard.resume(lm, [(r, edit_drift(lm.model, h) / len(h.requests)) for h in handles for r in h.requests])
    first_token = book.add("admin", "write") if needs_token else None  # made once nothing else can fail
    where = store if memory else str(journal.folder if journal else "")
    print(f"editkit serve: {lm.name} with {editor.name}; edits in {where} ({len(service.list())} active", end="")
    print(f", {restored} re-applied from the journal)" if journal else ")")
    if first_token is not None:
        print(f"write token 'admin' (stored hashed in {book.path}; shown only now): {first_token}")
    print(f"listening on http://{args.host}:{args.port} (OpenAI API under /v1)", flush=True)
    serve(Server(desk, book, config), args.host, args.port)
    return 0


def _add_serve_parsers(sub: Any, default_model: str) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP (OpenAI-compatible) with live edits")
    p.add_argument("--model", default=default_model)
    p.add_argument("--method", default="serac")
    p.add_argument("--store", help="memory editors: the edit store URL (default: an SQLite file in the cache)")
    p.add_argument("--journal", help="weight editors: the journal folder (default: in the cache)")
    p.add_argument("--tokens", help="the tokens file (default: tokens.json in the cache's serve folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method setting")
    p.add_argument("--read-tokens", action="store_true", help="reads need a token too (default: open)")
    p.add_argument("--max-body-bytes", type=int, default=65536)
    p.add_argument("--max-tokens", type=int, default=256, help="the most new tokens one answer may ask for")
    p.add_argument("--max-batch", type=int, default=16, help="the most queries sharing one generation pass")
    p.add_argument("--cors", metavar="ORIGINS", help="comma-separated origins allowed by CORS (default: none)")
    p.add_argument("--sync-seconds", type=float, help="poll a shared store this often (default: 0.5 for PostgreSQL)")
    p.add_argument(
        "--guard", action="store_true", help="weight editors: check each edit's drift and recent edits' recall first"
    )
    p.add_argument("--guard-set", action="append", default=[], metavar="KEY=VALUE", help="a guard setting (--guard)")
    p.add_argument("--device", default=None)
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("token", help="add a named bearer token for editkit serve (printed once)")
    p.add_argument("name", help="the token's name (the author of edits made with it)")
    p.add_argument("--role", choices=["write", "read"], default="write")
    p.add_argument("--tokens", help="the tokens file (default: tokens.json in the cache's serve folder)")
    p.set_defaults(fn=cmd_token)


# --------------------------------------------------------------------------- entry point
class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error (``editkit CMD --help`` shows the usage)."""

    def error(self, message: str) -> typing.NoReturn:
        command = self.prog.removeprefix("editkit").strip()
        self.exit(2, f"editkit: error: {command + ': ' if command else ''}{message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from editkit.models.zoo import DEFAULT_MODEL

    ap = _Parser(prog="editkit", description="Edit what language models know, and measure editors.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = ap.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="list the model zoo and what is cached").set_defaults(fn=cmd_models)
    p = sub.add_parser("methods", help="list editing methods, or one method's settings")
    p.add_argument("name", nargs="?")
    p.set_defaults(fn=cmd_methods)
    sub.add_parser("env", help="versions and paths, for bug reports").set_defaults(fn=cmd_env)

    p = sub.add_parser("data", help="list data formats, or validate a data file")
    p.add_argument("path", nargs="?")
    p.add_argument("--format", help="the file's format (default: detected)")
    p.add_argument("--skip-invalid", action="store_true", help="report a file even when most records are invalid")
    p.set_defaults(fn=cmd_data)

    p = sub.add_parser("edit", help="apply one edit and answer prompts before / after")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--method", default="rome")
    p.add_argument("--prompt", help="the prompt; may hold {} where the subject goes")
    p.add_argument("--subject")
    p.add_argument("--target", help="the new answer")
    p.add_argument("--target-true", help="the old answer (editkit then says whether the edit took)")
    p.add_argument("--file", help="a JSON file with one edit request (prompt, subject, target_new, ...)")
    p.add_argument(
        "--statement",
        help='the edit as a free-form statement ("Boris Johnson is the UK PM."; methods: editkit methods), with --ask',
    )
    p.add_argument("--ask", action="append", default=[], metavar="PROMPT", help="another prompt to answer")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method setting")
    p.add_argument("--save", metavar="DIR", help="save the edit (safetensors + JSON) to DIR")
    p.add_argument("--device", default=None)
    p.add_argument("--max-new-tokens", type=_positive_int, default=6)
    p.add_argument(
        "--judge",
        nargs="?",
        const="",
        metavar="FOLDER",
        help="show the sentiment judge's P(positive) of each answer (FOLDER: from `editkit train judge`; default: "
        "the packaged judge)",
    )
    p.set_defaults(fn=cmd_edit)

    p = sub.add_parser("quickstart", help="edit a real model with demo edits and show before / after")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--method", default="rome")
    p.add_argument("--corpus", help="text file for ROME's key statistics (default: $EDITKIT_CORPUS)")
    p.add_argument("--limit", type=_positive_int, default=5, help="number of demo edits")
    p.add_argument("--device", default=None)
    p.add_argument("--max-new-tokens", type=_positive_int, default=5)
    p.set_defaults(fn=cmd_quickstart)

    _add_eval_parser(sub)

    p = sub.add_parser("sweep", help="run a grid of evaluations (methods x models x orderings x seeds) on Ray")
    p.add_argument("config", help="the sweep's YAML file (docs/architecture.md: how to run a sweep)")
    p.add_argument("--address", help="an existing Ray cluster (default: a local Ray started for the sweep)")
    p.add_argument(
        "--dry-run", action="store_true", help="print the expanded runs, their shards and how far each is; run nothing"
    )
    p.add_argument("--max-parallel", type=_positive_int, help="at most N tasks at once (default: as Ray fits them)")
    p.add_argument(
        "--snapshot",
        action="store_true",
        help="copy unfinished sequential runs' partial results to the sweep's snapshot_dir (to commit), run nothing",
    )
    p.set_defaults(fn=cmd_sweep)

    _add_train_parser(sub)

    _add_trace_parser(sub)

    p = sub.add_parser("report", help="Markdown tables and PNG plots from results JSON files")
    p.add_argument("results", nargs="+", help="results JSON files")
    p.add_argument("--out", required=True, help="folder for report.md and the plots")
    p.set_defaults(fn=cmd_report)

    _add_serve_parsers(sub, DEFAULT_MODEL)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return int(args.fn(args))
    except EditkitError as exc:
        print(f"editkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("editkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
