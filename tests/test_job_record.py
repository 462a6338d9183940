"""The typed job record reads every column of ``fine_tune_job`` and gives the row back
as it was read: ``finetune list --json`` and ``status --json`` print ``as_dict()``."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from curation.db import jobs
from curation.db.jobs import Job, JobStatus


def test_a_job_row_round_trips_with_its_keys_in_order(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT curation_create_namespace('recs')")
    conn.execute(
        "INSERT INTO fine_tune_job (namespace, base_model, hyperparameters, status)"
        " VALUES ('recs', 'gpt-4o-mini', '{\"n_epochs\": 3}', 'running')"
    )
    joined = conn.execute(
        "SELECT j.*, NULL::text AS dataset_sha256 FROM fine_tune_job j"
    ).fetchone()
    plain = conn.execute("SELECT * FROM fine_tune_job").fetchone()
    assert joined is not None and plain is not None
    for row in (joined, plain):
        job = Job.from_row(row)
        assert list(job.as_dict()) == list(row)  # the order --json prints
        assert job.as_dict() == row
    listed = jobs.list_for(conn, "recs")
    assert [j.status for j in listed] == [JobStatus.RUNNING]
    assert "dataset_sha256" in listed[0].as_dict()
    assert json.dumps(listed[0].status) == '"running"' and f"{listed[0].status}" == "running"


def test_a_column_the_record_lacks_fails_loudly(conn: psycopg.Connection[Any]) -> None:
    """A migration that adds a column to fine_tune_job must add it to Job too, or
    --json would drop it silently: reading such a row is an error in every test."""
    conn.execute("SELECT curation_create_namespace('recs')")
    conn.execute("INSERT INTO fine_tune_job (namespace, base_model) VALUES ('recs', 'm')")
    row = conn.execute("SELECT *, 1 AS added_later FROM fine_tune_job").fetchone()
    assert row is not None
    with pytest.raises(TypeError, match="added_later"):
        Job.from_row(row)
