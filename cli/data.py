"""Commands ``priorscope synth`` and ``priorscope data check``, ``data show``, ``data score``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from priorscope.engine.data.summary import DataSummary

console = Console(soft_wrap=True)  # keep paths and messages on one greppable line

FORMAT_HELP = "vlmevalkit-tsv (tsv), hf-parquet (parquet) or llava-jsonl (jsonl); default: detect."
COLUMN_HELP = "Map a field to a file column, e.g. --column question=prompt (repeatable)."
INDEX_HELP = (
    "Integer answers of multiple-choice rows are 0-based option indices (AI2D, ScienceQA) or "
    "option texts; default: detect per file, refuse when ambiguous."
)
BINARY_HELP = "1/0 answers mean yes/no (HallusionBench); default: only in a 'gt_answer' column."
DUPLICATE_HELP = (
    "Repeated ids: derive ID#k, or error; default (auto): derive except in VLMEvalKit TSV."
)
MISSING_IMAGE_HELP = (
    "Rows without an image: text-only, or error; default (auto): text-only where the format "
    "says so (null parquet image, JSONL line without 'image'), error in TSV."
)
METRIC_HELP = "Open-answer metric: vqa, relaxed (ChartQA) or anls (DocVQA); default: by name."


ANSWER_IS_INDEX = typer.Option(None, "--answer-is-index/--answer-is-text", help=INDEX_HELP)
YES_NO_01 = typer.Option(None, "--answer-01-is-yes-no/--answer-01-is-number", help=BINARY_HELP)
DUPLICATE_IDS = typer.Option("auto", "--duplicate-ids", help=DUPLICATE_HELP)
MISSING_IMAGE = typer.Option("auto", "--missing-image", help=MISSING_IMAGE_HELP)
METRIC = typer.Option("auto", "--metric", help=METRIC_HELP)
FORMAT = typer.Option(None, "--format", help=FORMAT_HELP)
IMAGE_ROOT = typer.Option(None, "--image-root", help="Folder image paths are under.")
COLUMN = typer.Option(None, "--column", help=COLUMN_HELP)


def _synth(
    out: Path = typer.Option(..., "--out", help="TSV file to write."),
    n: int = typer.Option(500, "--n", help="Number of rows; they cycle through the templates."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same bytes."),
    size: int = typer.Option(112, "--size", help="Image side in pixels."),
    prior_rate: float = typer.Option(
        0.8, "--prior-rate", help="Share of prior objects drawn in their canonical colour."
    ),
    mc: bool = typer.Option(False, "--mc", help="Multiple choice: options A-D, answer a letter."),
    templates: str = typer.Option(
        "color,count,presence,prior,control", "--templates", help="Comma-separated templates."
    ),
    benchmark: str = typer.Option("synth", "--benchmark", help="Benchmark name of the rows."),
) -> None:
    """Write the synthetic benchmark with planted priors as a VLMEvalKit TSV.

    Example: priorscope synth --out synth.tsv --n 500 --seed 0 --prior-rate 0.8 --mc
    """
    from priorscope.engine.data.synth import SynthConfig, generate, parse_templates, write_tsv

    cfg = SynthConfig(
        n=n,
        seed=seed,
        size=size,
        prior_rate=prior_rate,
        mc=mc,
        templates=parse_templates(templates),
        benchmark=benchmark,
    )
    examples = generate(cfg)
    path = write_tsv(examples, out)
    counter = sum(e.metadata["counter_prior"] == "1" for e in examples)
    priors = sum(e.metadata["template"] == "prior" for e in examples)
    console.print(
        f"Wrote {len(examples)} rows ({'multiple choice' if mc else 'open-ended'}, "
        f"{size}x{size} images) to [bold]{path}[/bold]; {counter} of {priors} prior rows are "
        "counter-prior."
    )


def _check(
    file: Path = typer.Argument(..., help="Benchmark file (TSV, parquet or JSONL)."),
    format: str = FORMAT,
    on_bad: str = typer.Option("error", "--on-bad", help="error: stop at the first bad row; skip."),
    image_root: Path = IMAGE_ROOT,
    column: list[str] = COLUMN,
    benchmark: str = typer.Option(None, "--benchmark", help="Benchmark name (default: file stem)."),
    max_pixels: int = typer.Option(None, "--max-pixels", help="Largest image accepted, in pixels."),
    answer_is_index: bool | None = ANSWER_IS_INDEX,
    yes_no_01: bool | None = YES_NO_01,
    duplicate_ids: str = DUPLICATE_IDS,
    missing_image: str = MISSING_IMAGE,
    metric: str = METRIC,
) -> None:
    """Validate a benchmark file, decoding every image, and print what it holds.

    Exits 0 when every row is good, 1 when a row is bad (skipped rows are listed and reported).

    Example: priorscope data check synth.tsv --on-bad skip
    """
    from priorscope.engine.data import load
    from priorscope.engine.data.summary import summarize

    result = load(
        file,
        format=format,
        columns=column or None,
        image_root=image_root,
        on_bad=on_bad,
        benchmark=benchmark,
        max_pixels=max_pixels,
        decode_images=True,
        answer_is_index=answer_is_index,
        yes_no_01=yes_no_01,
        duplicate_ids=duplicate_ids,
        missing_image=missing_image,
        metric=metric,
    )
    summary = summarize(result)
    _print_summary(summary)
    if not summary.ok:
        raise typer.Exit(code=1)


def _print_summary(summary: DataSummary) -> None:
    console.print(
        f"[bold]{summary.path}[/bold] ({summary.format}): {summary.n_examples} of "
        f"{summary.n_rows} rows loaded; {summary.n_multiple_choice} multiple choice, "
        f"{summary.n_open} open-ended, {summary.n_unanswered} without a gold answer."
    )
    if summary.n_text_only or summary.n_multi_image or summary.n_derived_ids:
        console.print(
            f"{summary.n_text_only} text-only, {summary.n_multi_image} with several images, "
            f"{summary.n_derived_ids} with a derived id."
        )
    for note in summary.notes:
        console.print(f"Note: {note}", highlight=False)
    tables = [("benchmark", summary.by_benchmark), ("category", summary.by_category)]
    if summary.by_template != summary.by_category:  # the synth's categories are its templates
        tables.append(("template", summary.by_template))
    for title, counts in tables:
        if counts:
            table = Table(title=f"Rows per {title}", title_justify="left")
            table.add_column(title)
            table.add_column("rows", justify="right")
            for name, count in counts.items():
                table.add_row(name, str(count))
            console.print(table)
    if summary.by_template:
        console.print(f"Counter-prior rows: {summary.n_counter_prior}")
    if summary.skipped:
        console.print(f"[bold red]{len(summary.skipped)} rows skipped[/bold red]:")
        for problem in summary.skipped[:20]:
            console.print(f"  {problem.message()}", highlight=False)
        if len(summary.skipped) > 20:
            console.print(f"  ... and {len(summary.skipped) - 20} more")
        console.print(f"Report: {summary.report_path}")
    elif summary.n_examples == 0:
        console.print("[bold red]No rows:[/bold red] the file holds no examples.")


def _show(
    file: Path = typer.Argument(..., help="Benchmark file (TSV, parquet or JSONL)."),
    n: int = typer.Option(5, "--n", help="Number of examples to show."),
    format: str = FORMAT,
    image_root: Path = IMAGE_ROOT,
    column: list[str] = COLUMN,
    answer_is_index: bool | None = ANSWER_IS_INDEX,
    yes_no_01: bool | None = YES_NO_01,
    duplicate_ids: str = DUPLICATE_IDS,
    missing_image: str = MISSING_IMAGE,
    metric: str = METRIC,
) -> None:
    """Print the first examples of a benchmark file as the pipeline will see them.

    Example: priorscope data show synth.tsv --n 5
    """
    from priorscope.engine.data import load
    from priorscope.engine.errors import UsageError

    if n < 1:
        raise UsageError(f"Expected --n to be a positive number of examples. Got {n} instead.")
    result = load(
        file,
        format=format,
        columns=column or None,
        image_root=image_root,
        limit=n,
        answer_is_index=answer_is_index,
        yes_no_01=yes_no_01,
        duplicate_ids=duplicate_ids,
        missing_image=missing_image,
        metric=metric,
    )
    for example in result.examples:
        table = Table(
            title=f"{example.benchmark} / {example.id}", title_justify="left", show_header=False
        )
        table.add_column("field", style="bold")
        table.add_column("value")
        table.add_row("question", example.question)
        if example.hint:
            table.add_row("hint", example.hint)
        for label, option in zip(example.option_labels, example.options, strict=True):
            table.add_row(f"option {label}", option)
        table.add_row("answers", ", ".join(example.answers) or "(none)")
        table.add_row("category", example.category or "(none)")
        if example.metric != "vqa" and not example.is_multiple_choice:
            table.add_row("metric", example.metric)
        images = example.decoded_images()
        pairs = zip(images, example.images, strict=True)
        sizes = [f"{im.width}x{im.height}, {len(b)} bytes" for im, b in pairs]
        table.add_row(
            "image" if len(sizes) <= 1 else "images", "; ".join(sizes) or "(none: text-only)"
        )
        for key, value in example.metadata.items():
            table.add_row(key, value)
        console.print(table)


def _score(
    file: Path = typer.Argument(..., help="Benchmark file (TSV, parquet or JSONL)."),
    answers: Path = typer.Option(
        ..., "--answers", help="The model's answer file (JSONL, JSON, TSV, CSV, parquet, xlsx)."
    ),
    scorer: str = typer.Option(
        "priorscope", "--scorer", help="priorscope, or vlmevalkit (VLMEvalKit's rules)."
    ),
    compare: bool = typer.Option(
        False,
        "--compare",
        help="Also read every reply with the other scorer and show where "
        "priorscope and VLMEvalKit part.",
    ),
    id_column: str = typer.Option(
        None, "--id-column", help="Answer-file id column (default: question_id, index or id)."
    ),
    reply_column: str = typer.Option(
        None,
        "--reply-column",
        help="Answer-file reply column (default: text, prediction, response, output or pred).",
    ),
    out: Path = typer.Option(None, "--out", help="Write every scored row to this TSV."),
    show: int = typer.Option(10, "--show", help="Disagreements to print with --compare."),
    format: str = FORMAT,
    image_root: Path = IMAGE_ROOT,
    column: list[str] = COLUMN,
    answer_is_index: bool | None = ANSWER_IS_INDEX,
    yes_no_01: bool | None = YES_NO_01,
    duplicate_ids: str = DUPLICATE_IDS,
    missing_image: str = MISSING_IMAGE,
    metric: str = METRIC,
) -> None:
    """Score a model's answer file from another harness against a benchmark file.

    Replies are matched by id (LLaVA answer JSONL: question_id/text; VLMEvalKit predictions:
    index/prediction); repeated ids are numbered ID#k as the benchmark's are.

    Example: priorscope data score MME.parquet --answers llava-v1.5-13b-mme.jsonl --compare
    """
    import csv

    from priorscope.engine.data import load, scoring
    from priorscope.engine.data.replies import compare_scorers, load_replies, score_replies

    scoring.check_scorer(scorer)
    result = load(
        file,
        format=format,
        columns=column or None,
        image_root=image_root,
        missing_image=missing_image,
        answer_is_index=answer_is_index,
        yes_no_01=yes_no_01,
        duplicate_ids=duplicate_ids,
        metric=metric,
    )
    replies = load_replies(answers, id_column=id_column, reply_column=reply_column)
    scored = score_replies(result.examples, replies, scorer)
    console.print(
        f"[bold]{answers}[/bold] against [bold]{file}[/bold]: {len(replies.by_id)} replies "
        f"({replies.id_column}/{replies.reply_column}; {replies.n_derived} with a derived id), "
        f"{len(result.examples)} examples; {len(scored.rows)} scored, "
        f"{len(scored.unanswered)} without a reply, {len(scored.unscored)} without a gold "
        f"answer, {len(scored.unknown)} replies to no example.",
        highlight=False,
    )
    if scored.unknown:
        console.print(f"Replies to no example (first 5): {scored.unknown[:5]}", highlight=False)
    table = Table(title=f"Accuracy, --scorer {scorer}", title_justify="left")
    table.add_column("category")
    table.add_column("n", justify="right")
    table.add_column("accuracy", justify="right")
    for name, (n, acc) in scored.by_category().items():
        table.add_row(name, str(n), f"{100 * acc:.2f}%")
    table.add_row("[bold]all[/bold]", str(len(scored.rows)), f"{100 * scored.accuracy:.2f}%")
    console.print(table)
    if scored.unanswered_gold:
        console.print(
            f"Counting the {scored.unanswered_gold} examples without a reply as wrong: "
            f"{100 * scored.accuracy_all:.2f}%.",
            highlight=False,
        )
    if compare:
        other = "vlmevalkit" if scorer == "priorscope" else "priorscope"
        theirs = score_replies(result.examples, replies, other)
        pair = (scored, theirs) if scorer == "priorscope" else (theirs, scored)
        cmp = compare_scorers(*pair)
        console.print(
            f"priorscope vs VLMEvalKit's rules: same reading {100 * cmp.reading_rate:.2f}%, same "
            f"right/wrong verdict {100 * cmp.verdict_rate:.2f}% of {cmp.n} replies; accuracy "
            f"{100 * pair[0].accuracy:.2f}% vs {100 * pair[1].accuracy:.2f}%.",
            highlight=False,
        )
        for rule, (n, same) in sorted(cmp.by_rule.items()):
            console.print(f"  {rule}: {same}/{n} read alike", highlight=False)
        for d in cmp.disagreements[:show]:
            reply = d.reply.replace("\n", "\\n")[:80]
            console.print(
                f"  {d.example_id} ({d.rule}): {reply!r} -> priorscope "
                f"{d.priorscope.answer!r} ({d.priorscope.score:g}), VLMEvalKit "
                f"{d.vlmevalkit.answer!r} ({d.vlmevalkit.score:g})",
                highlight=False,
            )
    if out is not None:
        with open(out, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["id", "category", "rule", "reply", "answer", "extracted", "score"])
            for ex, reply, s in scored.rows:
                row = [ex.id, ex.category, scoring.rule(ex), reply, s.answer or "", s.extracted]
                writer.writerow([*row, f"{s.score:g}"])
        console.print(f"Wrote {out}")


def register(app: typer.Typer) -> None:
    """Add ``synth`` and the ``data`` group (check, show) to the root app."""
    app.command("synth")(_synth)
    data_app = typer.Typer(
        name="data",
        help="Check, inspect and score benchmark files.\n\nExample: priorscope data check bench.tsv",
        no_args_is_help=True,
    )
    data_app.command("check")(_check)
    data_app.command("show")(_show)
    data_app.command("score")(_score)
    app.add_typer(data_app, name="data")
