from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from curation.cli.context import AppContext, pass_app
from curation.cli.output import dumps, json_option
from curation.cli.params import ROW_IDS

if TYPE_CHECKING:  # the export path (psycopg, tiktoken) is imported by the commands using it
    from curation.export.run import ExportRequest, ExportResult


def export_options(func: Any) -> Any:
    """Options shared by `export`, `finetune submit` and `retrain`."""
    options = [
        click.option(
            "--model", "base_model", help="Base model (default: the namespace's base_model)."
        ),
        click.option(
            "--system-prompt",
            help="Short training system prompt (default: the namespace's; '' for none).",
        ),
        click.option(
            "--validation-fraction",
            type=float,
            default=0.1,
            show_default=True,
            help="Share of rows (by prompt hash) held out for validation.",
        ),
        click.option(
            "--since", type=click.DateTime(), help="Only rows included at or after this time."
        ),
        click.option("--tag", help="Only rows with this tag, as key=value."),
        click.option("--epochs", type=click.IntRange(1, 50), help="Epochs (default: the model's)."),
        click.option(
            "--workers",
            type=click.IntRange(1, 64),
            help="Processes for large exports (default: one per CPU, at most 4).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_request(
    app: AppContext,
    conn: Any,
    namespace: str,
    out: Path,
    options: dict[str, Any],
    fmt: str = "chat",
    ids: tuple[int, ...] = (),
) -> ExportRequest:
    from curation.db import export as db_export
    from curation.db import namespaces
    from curation.export.run import ExportRequest

    ns = namespaces.get(conn, namespace)
    base = options.get("base_model") or ns.base_model
    if not base:
        raise click.UsageError(
            f"no base model: pass --model, or set one: curation ns set {namespace} --base-model M"
        )
    prompt = options.get("system_prompt")
    tag_key = tag_value = None
    if options.get("tag"):
        tag_key, _, tag_value = options["tag"].partition("=")
    since: datetime | None = options.get("since")
    return ExportRequest(
        namespace=namespace,
        out_dir=out,
        base_model=base,
        system_prompt=ns.training_system_prompt if prompt is None else (prompt or None),
        validation_fraction=options.get("validation_fraction", 0.1),
        format=fmt,
        filters=db_export.Filters(
            since=since, ids=ids or None, tag_key=tag_key, tag_value=tag_value
        ),
        epochs=options.get("epochs"),
        models_file=app.settings().models_file,
        workers=options.get("workers"),
    )


def run_export(conn: Any, request: ExportRequest, quiet: bool) -> ExportResult:
    from curation.db import export as db_export
    from curation.export.run import export

    if quiet or not sys.stderr.isatty():
        return export(conn, request)
    total = db_export.count_rows(conn, request.namespace, request.filters)
    with click.progressbar(length=total, label="exporting", file=sys.stderr) as bar:
        return export(conn, request, on_row=bar.update)


WARNING = "warning: "


def summary(result: ExportResult) -> list[str]:
    m = result.manifest
    lines = [
        f"wrote {m['counts']['train']} training and {m['counts']['validation']} validation examples "
        f"({m['tokens']['train'] + m['tokens']['validation']} tokens) to {result.train_path.parent}",
        f"dataset {result.dataset_id}, sha256 {m['sha256'][:16]}…, est. training cost "
        f"{_usd(m['estimated_training_cost_usd'])} for {m['epochs']} epochs of {m['base_model']}",
        f"tokens counted with {m['counted_with']}; cost: {m['cost_basis']}",
    ]
    lines += [f"skipped row {s['id']}: {s['reason']}" for s in m["skipped"]]
    lines += [f"{WARNING}{w}" for w in m["warnings"]]
    return lines


def _usd(amount: float | None) -> str:
    return "unknown" if amount is None else f"${amount:.2f}"


@click.command("export")
@click.argument("namespace")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Folder for the files.",
)
@export_options
@click.option("--ids", type=ROW_IDS, help="Only these row ids, e.g. 3,14,15.")
@click.option(
    "--format", "fmt", type=click.Choice(["chat", "dpo"]), default="chat", show_default=True
)
@json_option
@pass_app
def export_command(
    app: AppContext,
    /,
    namespace: str,
    out: Path,
    ids: tuple[int, ...] | None,
    fmt: str,
    as_json: bool,
    **options: Any,
) -> None:
    """Write NAMESPACE's included rows as train/validation JSONL and a manifest."""
    with app.db() as conn:
        result = run_export(
            conn, build_request(app, conn, namespace, out, options, fmt, ids or ()), as_json
        )
    if as_json:  # warnings go to stderr, so stdout stays the result alone
        click.echo(dumps({**result.manifest, "train_path": str(result.train_path)}))
        lines = [f"{WARNING}{w}" for w in result.manifest["warnings"]]
    else:
        lines = summary(result)
    for line in lines:
        click.echo(line, err=line.startswith(WARNING))


COMMANDS = [export_command]
