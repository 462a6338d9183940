"""``curation coverage``: a namespace's clusters of prompts and how much traffic the
included rows cover. The work is ``curation.curate.coverage``'s."""

from __future__ import annotations

import click

from curation.cli.context import AppContext, pass_app
from curation.cli.output import emit, json_option

COLUMNS = ["id", "size", "traffic", "included", "negative_feedback", "disagreements", "example"]


@click.command("coverage")
@click.argument("namespace")
@click.option(
    "--recluster", is_flag=True, help="Cluster every row anew (default: assign only new rows)."
)
@click.option(
    "--limit",
    type=click.IntRange(1, 1_000_000),
    default=50,
    show_default=True,
    help="Clusters listed (the covered share counts them all).",
)
@click.option(
    "--embeddings",
    "model",
    metavar="MODEL",
    help="Recluster every row by embeddings from MODEL at the configured provider "
    "(OPENAI_BASE_URL, OPENAI_API_KEY) instead of by words.",
)
@json_option
@pass_app
def coverage_command(
    app: AppContext, namespace: str, recluster: bool, limit: int, model: str | None, as_json: bool
) -> None:
    """Clusters of NAMESPACE's prompts, most traffic first, and the covered share.

    Rows are grouped by the words of their prompts (MinHash); new rows join the
    cluster they are nearest. covered_share is the share of traffic (times seen)
    in clusters with at least one included row: review with --order coverage to
    raise it.
    """
    from curation.curate import coverage

    embed = None
    if model is not None:
        from curation.jobs.embeddings import embedder

        embed = embedder(app.settings(), model)
    with app.db(autocommit=True) as conn:
        updated = coverage.update(conn, namespace, recluster=recluster, embed=embed)
        found = coverage.report(conn, namespace, limit)
    if as_json:
        emit({"clusters": found["clusters"], "covered_share": found["covered_share"]}, True)
        return
    share = found["covered_share"]
    click.echo(
        f"covered_share {share:.3f}: {share:.1%} of {namespace}'s traffic is in clusters "
        f"with an included row; {updated.assigned} rows assigned now "
        f"({updated.new_clusters} new clusters, {updated.seconds:.1f}s)"
    )
    emit(found["clusters"], False, COLUMNS)


COMMANDS = [coverage_command]
