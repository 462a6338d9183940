from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from curation.cli.context import AppContext, pass_app
from curation.cli.output import dumps, json_option
from curation.cli.params import ROW_IDS
from curation.errors import PII_REFUSED

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
        click.option(
            "--pii",
            type=click.Choice(["report", "redact", "refuse"]),
            default="report",
            show_default=True,
            help="Personal data (e-mail, phone, card, IBAN, IP, API keys): list the rows (values "
            "masked), replace each with a placeholder like <EMAIL_1>, or write nothing if any "
            f"is found (exit {PII_REFUSED}).",
        ),
        click.option(
            "--pii-region",
            default="US",
            show_default=True,
            envvar="CURATION_PII_REGION",
            help="Region (ISO code) phone numbers without a + are read as; NONE: only + numbers.",
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
    request = ExportRequest(
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
    return with_pii(request, options.get("pii", "report"), options.get("pii_region", "US"))


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
    lines += dropped_lines(m.get("near_duplicates"))
    lines += pii_lines(m.get("pii"))
    lines += [f"{WARNING}{w}" for w in m["warnings"]]
    return lines


def dedupe_near(conn: Any, request: ExportRequest) -> ExportRequest:
    """The request with the near-duplicates it would write marked to drop."""
    from dataclasses import replace

    from curation.curate import coverage

    drop = coverage.near_duplicates_to_drop(conn, request.namespace, request.filters)
    return replace(request, near_duplicates=drop)


SHOWN_DROPPED = 20  # the manifest lists them all


def dropped_lines(dropped: list[dict[str, int]] | None) -> list[str]:
    """``--dedupe near``'s drops: one line, the first SHOWN_DROPPED as ``id (kept K)``."""
    if dropped is None:
        return []
    if not dropped:
        return ["dropped no near-duplicates"]
    shown = ", ".join(f"{d['id']} (kept {d['kept']})" for d in dropped[:SHOWN_DROPPED])
    more = (
        f" and {len(dropped) - SHOWN_DROPPED} more (see manifest.json)"
        if len(dropped) > SHOWN_DROPPED
        else ""
    )
    return [f"dropped {len(dropped)} near-duplicate rows: {shown}{more}"]


def with_pii(request: ExportRequest, mode: str, region: str) -> ExportRequest:
    """The request with its personal-data mode and phone region (checked here: one line)."""
    from dataclasses import replace

    code = region.strip().upper()
    if code != "NONE":
        import phonenumbers

        if code not in phonenumbers.SUPPORTED_REGIONS:
            raise click.BadParameter(
                f"{region[:20]!r} is not a region code: use a two-letter one like US or DE, "
                "or NONE",
                param_hint="--pii-region",
            )
    return replace(request, pii=mode, pii_region=None if code == "NONE" else code)


def pii_lines(found: dict[str, Any] | None) -> list[str]:
    from curation.export.pii import report_lines

    return report_lines(found)


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
@click.option(
    "--dedupe",
    type=click.Choice(["none", "near"]),
    default="none",
    show_default=True,
    help="near: keep one row of each group of near-identical prompts (corrected, then most "
    "seen, then oldest) and list the others in the manifest.",
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
    dedupe: str,
    as_json: bool,
    **options: Any,
) -> None:
    """Write NAMESPACE's included rows as train/validation JSONL and a manifest."""
    with app.db() as conn:
        request = build_request(app, conn, namespace, out, options, fmt, ids or ())
        if dedupe == "near":
            request = dedupe_near(conn, request)
        result = run_export(conn, request, as_json)
    if as_json:  # warnings go to stderr, so stdout stays the result alone
        click.echo(dumps({**result.manifest, "train_path": str(result.train_path)}))
        lines = [f"{WARNING}{w}" for w in result.manifest["warnings"]]
    else:
        lines = summary(result)
    for line in lines:
        click.echo(line, err=line.startswith(WARNING))


COMMANDS = [export_command]
