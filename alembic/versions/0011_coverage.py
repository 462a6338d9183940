"""Clusters and coverage (issue 16): which cluster each row's prompt belongs to.

``coverage_cluster`` holds a namespace's clusters (size, traffic and example as
of the last ``curation coverage``); ``coverage_row`` maps each assigned row to
its cluster and keeps the row's MinHash signature, so new rows are assigned and
near-duplicates found without hashing the old ones again. Both are derived data:
``curation coverage NS --recluster`` rebuilds them, so curators (who run review
and coverage) may write them. A deleted row takes its assignment with it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE coverage_cluster (
    id bigserial PRIMARY KEY,
    namespace text NOT NULL REFERENCES namespace (name) ON DELETE CASCADE,
    size integer NOT NULL DEFAULT 0,
    traffic bigint NOT NULL DEFAULT 0,
    example_row_id bigint,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX coverage_cluster_namespace_idx ON coverage_cluster (namespace);
COMMENT ON TABLE coverage_cluster IS 'Groups of a namespace''s rows whose prompts ask the same thing (MinHash over their words); written by curation coverage.';
COMMENT ON COLUMN coverage_cluster.id IS 'Cluster id, unique across namespaces (coverage_row.cluster_id).';
COMMENT ON COLUMN coverage_cluster.namespace IS 'The namespace whose rows it groups.';
COMMENT ON COLUMN coverage_cluster.size IS 'Rows assigned to it, as of the last curation coverage (a deleted row counts until the next --recluster; curation coverage reports it live).';
COMMENT ON COLUMN coverage_cluster.traffic IS 'Sum of its rows'' times_seen as each was assigned (repeats since are not counted here; curation coverage reports it live).';
COMMENT ON COLUMN coverage_cluster.example_row_id IS 'Its most-seen row when it was clustered (a new cluster: its most-seen first row): shown as its example, and the representative new rows are compared with.';
COMMENT ON COLUMN coverage_cluster.created_at IS 'When the cluster was made (a recluster makes them all anew).';

CREATE TABLE coverage_row (
    row_id bigint PRIMARY KEY,
    namespace text NOT NULL,
    cluster_id bigint NOT NULL REFERENCES coverage_cluster (id) ON DELETE CASCADE,
    signature bytea NOT NULL
);
CREATE INDEX coverage_row_cluster_idx ON coverage_row (cluster_id);
CREATE INDEX coverage_row_namespace_idx ON coverage_row (namespace);
COMMENT ON TABLE coverage_row IS 'The cluster of each assigned row (openai_chat_completion.id); rows without one are assigned by the next curation coverage or review --order coverage.';
COMMENT ON COLUMN coverage_row.row_id IS 'openai_chat_completion.id (unique across namespaces).';
COMMENT ON COLUMN coverage_row.namespace IS 'The row''s namespace.';
COMMENT ON COLUMN coverage_row.cluster_id IS 'coverage_cluster.id.';
COMMENT ON COLUMN coverage_row.signature IS 'MinHash signature of the normalised prompt''s words: 64 little-endian uint32 (datasketch affine32 scheme, seed 1, CRC-32 shingle hash).';

CREATE VIEW coverage_by_row AS
SELECT r.namespace, r.row_id, r.cluster_id, k.size AS cluster_size, k.traffic AS cluster_traffic,
       k.example_row_id
FROM coverage_row r JOIN coverage_cluster k ON k.id = r.cluster_id;
COMMENT ON VIEW coverage_by_row IS 'Each assigned row''s cluster: join it to a namespace table on row_id = id.';

CREATE FUNCTION curation_forget_coverage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM coverage_row WHERE row_id = OLD.id;
    RETURN OLD;
END $$;
CREATE TRIGGER forget_coverage AFTER DELETE ON openai_chat_completion
    FOR EACH ROW EXECUTE FUNCTION curation_forget_coverage();

GRANT SELECT, INSERT, UPDATE, DELETE ON coverage_cluster, coverage_row TO curation_curator;
GRANT USAGE, SELECT ON SEQUENCE coverage_cluster_id_seq TO curation_curator;
GRANT SELECT ON coverage_by_row TO curation_curator;
"""

DOWNGRADE = r"""
DROP TRIGGER forget_coverage ON openai_chat_completion;
DROP FUNCTION curation_forget_coverage();
DROP VIEW coverage_by_row;
DROP TABLE coverage_row;
DROP TABLE coverage_cluster;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
