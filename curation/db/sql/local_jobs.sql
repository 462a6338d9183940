-- The local backend's queue is fine_tune_job itself: a worker claims a row
-- (FOR UPDATE SKIP LOCKED), beats on it while training, and finishes it.
-- A worker is alive while its session, named 'curation-worker <worker>',
-- is connected and it beats: a job whose worker is gone or silent for
-- stale_after seconds is claimed again, and resumes from its checkpoint.

-- name: name_session
SELECT set_config('application_name', %(application_name)s, false) AS application_name

-- name: submit_local_job
UPDATE fine_tune_job
SET backend = 'local',
    status = 'queued',
    base_model = %(base_model)s,
    method = %(method)s,
    training_file_id = %(training_file)s,
    validation_file_id = %(validation_file)s,
    checkpoint_dir = %(checkpoint_dir)s,
    hyperparameters = %(hyperparameters)s,
    worker = NULL,
    heartbeat_at = NULL,
    cancel_requested_at = NULL,
    error = NULL,
    finished_at = NULL,
    updated_at = now()
WHERE id = %(id)s
RETURNING *

-- name: claim_local_job
-- A queued job nobody holds, or one whose worker died (its session is gone)
-- or stopped beating; the oldest first. Claiming counts an attempt.
UPDATE fine_tune_job j
SET status = 'running',
    worker = %(worker)s,
    heartbeat_at = now(),
    started_at = coalesce(j.started_at, now()),
    attempts = j.attempts + 1,
    updated_at = now()
WHERE j.id = (
    SELECT c.id FROM fine_tune_job c
    WHERE c.backend = 'local'
      AND (%(job_id)s::bigint IS NULL OR c.id = %(job_id)s::bigint)
      AND (
        (c.status = 'queued' AND c.worker IS NULL)
        OR (c.status IN ('queued', 'running') AND c.worker IS NOT NULL AND (
            c.heartbeat_at IS NULL
            OR c.heartbeat_at < now() - make_interval(secs => %(stale_after)s)
            OR NOT EXISTS (
                SELECT 1 FROM pg_stat_activity a
                WHERE a.application_name = 'curation-worker ' || c.worker
            )
        ))
      )
    ORDER BY c.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING j.*

-- name: beat_local_job
-- The claiming worker's sign of life; no row back: the job is no longer its own.
UPDATE fine_tune_job
SET heartbeat_at = now(), status = 'running', updated_at = now()
WHERE id = %(id)s AND worker = %(worker)s AND status IN ('queued', 'running')
RETURNING cancel_requested_at

-- name: finish_local_job
UPDATE fine_tune_job
SET status = %(status)s,
    fine_tuned_model = coalesce(%(fine_tuned_model)s, fine_tuned_model),
    result_location = coalesce(%(result_location)s, result_location),
    trained_tokens = coalesce(%(trained_tokens)s, trained_tokens),
    error = %(error)s,
    heartbeat_at = now(),
    finished_at = now(),
    updated_at = now()
WHERE id = %(id)s AND worker = %(worker)s AND status IN ('queued', 'running')
RETURNING *

-- name: release_local_job
-- A worker shutting down hands its job back to the queue.
UPDATE fine_tune_job
SET status = 'queued', worker = NULL, heartbeat_at = NULL, updated_at = now()
WHERE id = %(id)s AND worker = %(worker)s AND status IN ('queued', 'running')
RETURNING *

-- name: cancel_local_job
-- A job no worker holds is cancelled at once; a running one when its worker
-- sees the request (within a heartbeat).
UPDATE fine_tune_job
SET cancel_requested_at = coalesce(cancel_requested_at, now()),
    status = CASE WHEN worker IS NULL THEN 'cancelled' ELSE status END,
    finished_at = CASE WHEN worker IS NULL THEN now() ELSE finished_at END,
    updated_at = now()
WHERE id = %(id)s AND backend = 'local' AND status NOT IN ('succeeded', 'failed', 'cancelled')
RETURNING *

-- name: cancel_orphaned_local_job
-- A cancel asked of a job whose worker is gone: nobody will see the request.
UPDATE fine_tune_job
SET status = 'cancelled', finished_at = now(), updated_at = now()
WHERE id = %(id)s AND backend = 'local' AND cancel_requested_at IS NOT NULL
  AND status IN ('queued', 'running') AND worker = %(worker)s
RETURNING *

-- name: worker_connected
SELECT count(*) > 0 AS connected FROM pg_stat_activity
WHERE application_name = 'curation-worker ' || %(worker)s

-- name: workers_connected
SELECT count(*) AS workers FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE 'curation-worker %%'

-- name: get_local_job
SELECT * FROM fine_tune_job WHERE id = %(id)s AND backend = 'local'

-- name: list_local_jobs
SELECT * FROM fine_tune_job WHERE backend = 'local' ORDER BY id DESC LIMIT %(limit)s

-- name: insert_job_event
INSERT INTO fine_tune_event (job_id, level, message, data)
VALUES (%(job_id)s, %(level)s, %(message)s, %(data)s)
RETURNING *

-- name: job_events
-- The newest events, oldest first.
SELECT * FROM (
    SELECT * FROM fine_tune_event WHERE job_id = %(job_id)s ORDER BY id DESC LIMIT %(limit)s
) newest
ORDER BY id
