"""Safe cut-over (issue 14): shadow comparisons, serving tallies, rollout steps.

``namespace`` gains the comparator, the shadow and watch shares, the shadow
call budget and the automatic rollout policy. ``shadow_comparison`` keeps one
row per background comparison (keyed by the client's call id, the
``X-Curation-Id`` that ``recorded_call`` maps to a row); ``serving_tally``
holds per-proxy, per-minute counts of student calls and failures (the
decider's error rate, summed over every proxy); ``rollout_step`` records
every change of share the rollout made, with why and the numbers behind it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE namespace
    ADD COLUMN compare text,
    ADD COLUMN serve_shadow_percent smallint NOT NULL DEFAULT 0
        CONSTRAINT namespace_serve_shadow_percent_check CHECK (serve_shadow_percent BETWEEN 0 AND 100),
    ADD COLUMN serve_watch_percent smallint NOT NULL DEFAULT 0
        CONSTRAINT namespace_serve_watch_percent_check CHECK (serve_watch_percent BETWEEN 0 AND 100),
    ADD COLUMN shadow_per_minute integer NOT NULL DEFAULT 600
        CONSTRAINT namespace_shadow_per_minute_check CHECK (shadow_per_minute > 0),
    ADD COLUMN rollout jsonb;
COMMENT ON COLUMN namespace.compare IS 'How a student''s answer is compared with the teacher''s: exact, json, or a shell command (as curation eval --compare); NULL: exact.';
COMMENT ON COLUMN namespace.serve_shadow_percent IS 'Share of the calls the teacher answers (0-100) that are also sent to serve_model in the background and compared; the client never waits for it.';
COMMENT ON COLUMN namespace.serve_watch_percent IS 'Share of the calls serve_model answers (0-100) that the teacher also answers in the background, to keep comparing after a rollout.';
COMMENT ON COLUMN namespace.shadow_per_minute IS 'Budget of background (shadow and watch) calls per minute per proxy; calls over it are dropped and counted.';
COMMENT ON COLUMN namespace.rollout IS 'Automatic rollout (curation serve --rollout auto); NULL: the share is set by hand. {"model": the student, "stage": "shadow" or a step such as "25%", "since": when the stage began (the decider counts comparisons from then), "started_by": login, "policy": {"steps": [5, 25, 50, 100], "promote_at": 0.95, "min_samples": 200, "demote_below": 0.9, "max_error_rate": 0.02, "watch_percent": 2, "shadow_percent": 100, "window": 100, "min_window": 50, "min_calls": 50, "error_window_s": 60}}. Promote: the last min_samples comparisons of the stage agree at >= promote_at. Demote (any step, to shadow; shadow never demotes itself): the last window (>= min_window) comparisons of the stage agree below demote_below, or more than max_error_rate of >= min_calls student calls of the stage, over the last error_window_s (10-second tally buckets begun since the stage), failed, or of its background calls (the last window answered comparisons and the failed calls among them: timeout, status, connect) failed; a student failing either way is not promoted (over the last min_samples).';

CREATE TABLE shadow_comparison (
    id bigserial PRIMARY KEY,
    call_id uuid NOT NULL,
    namespace text NOT NULL,
    kind text NOT NULL CONSTRAINT shadow_comparison_kind_check CHECK (kind IN ('shadow', 'watch')),
    teacher_model text,
    student_model text NOT NULL,
    teacher_answer json,
    student_answer json,
    agreed boolean,
    error text,
    teacher_ms real,
    student_ms real,
    teacher_prompt_tokens integer,
    teacher_completion_tokens integer,
    student_prompt_tokens integer,
    student_completion_tokens integer,
    call_failed boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX shadow_comparison_recent_idx ON shadow_comparison (namespace, created_at DESC);
CREATE INDEX shadow_comparison_call_idx ON shadow_comparison (call_id);
-- the decider's and curation serve's reads (rollout.sql): a stage's answered comparisons
-- newest first, its failed background calls, the disagreements (review --disagreements)
CREATE INDEX shadow_comparison_answered_idx ON shadow_comparison (namespace, student_model, created_at DESC)
    WHERE agreed IS NOT NULL;
CREATE INDEX shadow_comparison_failed_idx ON shadow_comparison (namespace, student_model, created_at)
    WHERE call_failed;
CREATE INDEX shadow_comparison_disagreed_idx ON shadow_comparison (call_id, created_at)
    WHERE agreed = false;
COMMENT ON TABLE shadow_comparison IS 'One live comparison of a student with its teacher on the same call (shadow or watch); join recorded_call on call_id for the row.';
COMMENT ON COLUMN shadow_comparison.call_id IS 'The client call''s X-Curation-Id (recorded_call.id once the writer has recorded it).';
COMMENT ON COLUMN shadow_comparison.kind IS 'shadow: the teacher answered the client, the student was asked in the background; watch: the student answered, the teacher was asked in the background.';
COMMENT ON COLUMN shadow_comparison.teacher_answer IS 'The teacher''s assistant message.';
COMMENT ON COLUMN shadow_comparison.student_answer IS 'The student''s assistant message.';
COMMENT ON COLUMN shadow_comparison.agreed IS 'Whether the namespace''s comparator found the two answers equal; NULL when the background call failed (see error).';
COMMENT ON COLUMN shadow_comparison.error IS 'Why the background call gave no answer to compare (timeout, status, connect).';
COMMENT ON COLUMN shadow_comparison.call_failed IS 'The background call itself failed (timeout, an error status, no connection), not the comparator: for a shadow comparison the student failed, which counts against it in the rollout''s error rate.';
COMMENT ON COLUMN shadow_comparison.created_at IS 'When the background call was launched (the database''s clock less the age the proxy measured), so it counts in the rollout stage it was launched under.';
COMMENT ON COLUMN shadow_comparison.teacher_ms IS 'The teacher''s latency in milliseconds.';
COMMENT ON COLUMN shadow_comparison.student_ms IS 'The student''s latency in milliseconds.';

CREATE TABLE serving_tally (
    namespace text NOT NULL,
    proxy text NOT NULL,
    bucket timestamptz NOT NULL,
    student_calls integer NOT NULL DEFAULT 0,
    student_failures integer NOT NULL DEFAULT 0,
    background_calls integer NOT NULL DEFAULT 0,
    background_dropped integer NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, proxy, bucket)
);
CREATE INDEX serving_tally_namespace_idx ON serving_tally (namespace, bucket);
CREATE INDEX serving_tally_bucket_idx ON serving_tally (bucket);
COMMENT ON TABLE serving_tally IS 'Per proxy and 10-second bucket (pruned after a day by the rollout decider): calls the student answered or was asked to and how many failed (fell back), and background calls made or dropped over budget. Summed by the rollout decider.';
COMMENT ON COLUMN serving_tally.bucket IS 'Start of the 10-second bucket the calls were counted in (the proxy''s clock).';
COMMENT ON COLUMN serving_tally.proxy IS 'Which proxy process counted them (host:pid).';
COMMENT ON COLUMN serving_tally.student_failures IS 'Student calls that failed: fell back to the teacher, or (streams) were cut after the first byte.';

CREATE TABLE rollout_step (
    id bigserial PRIMARY KEY,
    namespace text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    model text,
    from_percent smallint NOT NULL,
    to_percent smallint NOT NULL,
    from_stage text NOT NULL,
    to_stage text NOT NULL,
    reason text NOT NULL,
    agreement real,
    samples integer,
    error_rate real,
    decided_by text NOT NULL
);
CREATE INDEX rollout_step_namespace_idx ON rollout_step (namespace, at DESC);
COMMENT ON TABLE rollout_step IS 'Every change the automatic rollout (or a person, through curation serve) made to a namespace''s serving: when, why, and the numbers behind it.';
COMMENT ON COLUMN rollout_step.from_stage IS 'off, shadow, or the step (e.g. 25%) before the change.';
COMMENT ON COLUMN rollout_step.to_stage IS 'off, shadow, or the step after it.';
COMMENT ON COLUMN rollout_step.reason IS 'Why, in one line: promote (agreement 0.97 over 214 >= 0.95), demote (agreement below 0.90), error rate, by hand.';
COMMENT ON COLUMN rollout_step.decided_by IS 'The proxy (host:pid) that held the decider lock, or the login that ran curation serve.';

GRANT SELECT ON shadow_comparison, serving_tally, rollout_step TO curation_curator;

CREATE VIEW shadow_disagreement AS
SELECT r.namespace, r.row_id, s.call_id, s.kind, s.student_model, s.student_answer,
       s.teacher_answer, s.created_at
FROM shadow_comparison s
JOIN recorded_call r ON r.id = s.call_id
WHERE s.agreed = false AND r.row_id IS NOT NULL;
COMMENT ON VIEW shadow_disagreement IS 'Every live comparison where the student disagreed with the teacher, with the row it was recorded in: what the next dataset should teach (curation review NS --disagreements).';
GRANT SELECT ON shadow_disagreement TO curation_curator;
"""

DOWNGRADE = r"""
DROP VIEW shadow_disagreement;
DROP TABLE rollout_step;
DROP TABLE serving_tally;
DROP TABLE shadow_comparison;
ALTER TABLE namespace
    DROP COLUMN rollout,
    DROP COLUMN shadow_per_minute,
    DROP COLUMN serve_watch_percent,
    DROP COLUMN serve_shadow_percent,
    DROP COLUMN compare;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
