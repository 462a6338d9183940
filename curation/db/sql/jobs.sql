-- name: insert_job
INSERT INTO fine_tune_job (namespace, dataset_id, base_model, suffix, method, hyperparameters, backend, status)
VALUES (%(namespace)s, %(dataset_id)s, %(base_model)s, %(suffix)s, %(method)s, %(hyperparameters)s, %(backend)s, 'pending')
RETURNING *

-- name: update_job
UPDATE fine_tune_job
SET provider_job_id = coalesce(%(provider_job_id)s, provider_job_id),
    training_file_id = coalesce(%(training_file_id)s, training_file_id),
    validation_file_id = coalesce(%(validation_file_id)s, validation_file_id),
    status = coalesce(%(status)s, status),
    fine_tuned_model = coalesce(%(fine_tuned_model)s, fine_tuned_model),
    result_location = coalesce(%(result_location)s, result_location),
    trained_tokens = coalesce(%(trained_tokens)s, trained_tokens),
    error = CASE WHEN %(clear_error)s THEN NULL ELSE coalesce(%(error)s, error) END,
    finished_at = CASE WHEN %(finished)s THEN coalesce(finished_at, now()) ELSE finished_at END,
    updated_at = now()
WHERE id = %(id)s
RETURNING *

-- name: get_job
SELECT j.*, d.sha256 AS dataset_sha256
FROM fine_tune_job j LEFT JOIN dataset d ON d.id = j.dataset_id
WHERE j.id::text = %(ref)s OR j.provider_job_id = %(ref)s

-- name: list_jobs
SELECT j.*, d.sha256 AS dataset_sha256
FROM fine_tune_job j LEFT JOIN dataset d ON d.id = j.dataset_id
WHERE %(namespace)s::text IS NULL OR j.namespace = %(namespace)s
ORDER BY j.id DESC
LIMIT %(limit)s

-- name: last_submitted_job
-- The newest job on this backend that reached it and did not fail or get
-- cancelled: retraining there on the same data as that one would change nothing.
SELECT j.*, d.sha256 AS dataset_sha256
FROM fine_tune_job j JOIN dataset d ON d.id = j.dataset_id
WHERE j.namespace = %(namespace)s AND j.backend = %(backend)s AND j.provider_job_id IS NOT NULL
  AND j.status NOT IN ('failed', 'cancelled')
ORDER BY j.id DESC
LIMIT 1

-- name: reusable_job
-- A job of this dataset, model and backend that never reached the backend:
-- its uploaded files are reused instead of uploaded again.
SELECT * FROM fine_tune_job
WHERE namespace = %(namespace)s AND dataset_id = %(dataset_id)s AND base_model = %(base_model)s
  AND backend = %(backend)s
  AND provider_job_id IS NULL
ORDER BY id DESC
LIMIT 1

-- name: try_namespace_lock
SELECT pg_try_advisory_lock(hashtext('curation_retrain'), hashtext(%(namespace)s)) AS locked
