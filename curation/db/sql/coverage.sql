-- name: coverage_lock
-- One assignment or recluster of a namespace at a time (review sessions assign too).
SELECT pg_advisory_xact_lock(hashtext('curation coverage ' || %(namespace)s))

-- name: coverage_unassigned
SELECT c.id, c.user_prompt::text AS user_prompt, c.times_seen FROM {table} c
WHERE c.namespace = %(namespace)s
  AND NOT EXISTS (SELECT 1 FROM coverage_row r WHERE r.row_id = c.id)
ORDER BY c.id

-- name: coverage_all_rows
SELECT c.id, c.user_prompt::text AS user_prompt, c.times_seen FROM {table} c
WHERE c.namespace = %(namespace)s
ORDER BY c.id

-- name: coverage_representatives
-- Each cluster's example row's signature (a cluster whose example was deleted has
-- none until the next --recluster; new rows then start a cluster of their own).
SELECT k.id AS cluster_id, r.signature
FROM coverage_cluster k JOIN coverage_row r ON r.row_id = k.example_row_id
WHERE k.namespace = %(namespace)s

-- name: coverage_clear
DELETE FROM coverage_cluster WHERE namespace = %(namespace)s

-- name: coverage_new_ids
SELECT nextval('coverage_cluster_id_seq') AS id FROM generate_series(1, %(count)s)

-- name: coverage_add_clusters
INSERT INTO coverage_cluster (id, namespace) SELECT unnest(%(ids)s::bigint[]), %(namespace)s

-- name: coverage_refresh
-- Size, traffic and example (the most-seen row) of every cluster; empty ones go.
WITH agg AS (
    SELECT r.cluster_id, count(*) AS size, sum(c.times_seen) AS traffic,
           (array_agg(c.id ORDER BY c.times_seen DESC, c.id))[1] AS example_row_id
    FROM coverage_row r JOIN {table} c ON c.namespace = r.namespace AND c.id = r.row_id
    WHERE r.namespace = %(namespace)s
    GROUP BY r.cluster_id
), changed AS (
    UPDATE coverage_cluster k SET size = agg.size, traffic = agg.traffic,
                                  example_row_id = agg.example_row_id
    FROM agg WHERE k.id = agg.cluster_id
    RETURNING k.id
)
DELETE FROM coverage_cluster k
WHERE k.namespace = %(namespace)s AND NOT EXISTS (SELECT 1 FROM agg WHERE agg.cluster_id = k.id)

-- name: coverage_add_totals
-- What an assignment run added: sizes and traffic grow by its rows' (no scan of the
-- clusters' other rows); a new cluster gets its example.
UPDATE coverage_cluster k SET size = k.size + d.size, traffic = k.traffic + d.traffic,
                              example_row_id = coalesce(k.example_row_id, d.example_row_id)
FROM unnest(%(clusters)s::bigint[], %(sizes)s::int[], %(traffic)s::bigint[],
            %(examples)s::bigint[]) AS d(cluster_id, size, traffic, example_row_id)
WHERE k.id = d.cluster_id

-- name: coverage_report
-- Clusters as they are now (included counts change with every decision), biggest
-- traffic first, with negative feedback and shadow disagreements of their rows.
WITH members AS (
    SELECT r.cluster_id, c.id, c.times_seen,
           (c.included IS NOT NULL AND c.excluded IS NULL) AS included
    FROM coverage_row r JOIN {table} c ON c.namespace = r.namespace AND c.id = r.row_id
    WHERE r.namespace = %(namespace)s
), negative AS (
    SELECT m.cluster_id, sum(f.negative) AS n
    FROM members m JOIN feedback_by_row f ON f.namespace = %(namespace)s AND f.row_id = m.id
    GROUP BY m.cluster_id
), disagreed AS (
    SELECT m.cluster_id, count(*) AS n
    FROM members m JOIN recorded_call rc ON rc.row_id = m.id
    JOIN shadow_comparison s ON s.call_id = rc.id
    WHERE s.agreed = false
    GROUP BY m.cluster_id
)
SELECT m.cluster_id AS id, count(*) AS size, sum(m.times_seen) AS traffic,
       count(*) FILTER (WHERE m.included) AS included,
       (SELECT e.user_prompt::text FROM {table} e
        WHERE e.namespace = %(namespace)s AND e.id = k.example_row_id) AS example,
       k.example_row_id,
       coalesce(max(neg.n), 0) AS negative_feedback,
       coalesce(max(dis.n), 0) AS disagreements
FROM members m
JOIN coverage_cluster k ON k.id = m.cluster_id
LEFT JOIN negative neg ON neg.cluster_id = m.cluster_id
LEFT JOIN disagreed dis ON dis.cluster_id = m.cluster_id
GROUP BY m.cluster_id, k.example_row_id
ORDER BY traffic DESC, size DESC, m.cluster_id

-- name: coverage_review_plan
-- The clusters that may have a pending row, with their traffic (as stored with each
-- cluster: summed as its rows were assigned) and whether an included row covers them:
-- a coverage review ranks them once, at its start. Only the decided rows (few, next to
-- the pending ones) are joined to their clusters; a cluster with as many decided rows
-- as its size has none pending. Its size counts deleted rows until a recluster, so a
-- fully decided cluster may stay in the plan: the review finds it empty and moves on.
WITH decided AS (
    SELECT r.cluster_id, count(*) AS decided,
           bool_or(c.included IS NOT NULL AND c.excluded IS NULL) AS covered
    FROM {table} c JOIN coverage_row r ON r.row_id = c.id
    WHERE c.namespace = %(namespace)s AND (c.included IS NOT NULL OR c.excluded IS NOT NULL)
    GROUP BY r.cluster_id
)
SELECT k.id AS cluster_id, k.traffic, coalesce(d.covered, false) AS covered
FROM coverage_cluster k LEFT JOIN decided d ON d.cluster_id = k.id
WHERE k.namespace = %(namespace)s AND k.size > coalesce(d.decided, 0)

-- name: coverage_cluster_covered
-- Whether a cluster has an included row now (its rows through coverage_row_cluster_idx).
SELECT EXISTS (
    SELECT 1 FROM coverage_row r JOIN {table} c ON c.namespace = r.namespace AND c.id = r.row_id
    WHERE r.cluster_id = %(cluster_id)s AND c.included IS NOT NULL AND c.excluded IS NULL
) AS covered

-- name: coverage_candidates
-- A cluster's pending rows (most seen first) or included rows, with signatures.
SELECT c.id, r.signature FROM coverage_row r
JOIN {table} c ON c.namespace = r.namespace AND c.id = r.row_id
WHERE r.cluster_id = %(cluster_id)s AND {state}
ORDER BY c.times_seen DESC, c.id
LIMIT %(limit)s

-- name: coverage_pending
c.included IS NULL AND c.excluded IS NULL AND NOT (c.id = ANY(%(skip)s))
-- name: coverage_included
c.included IS NOT NULL AND c.excluded IS NULL

-- name: coverage_lock_pending
-- The chosen row, if it is still pending and no other curator holds it.
SELECT *, user_prompt::text AS user_prompt, 'pending' AS state FROM {table}
WHERE namespace = %(namespace)s AND id = %(id)s AND included IS NULL AND excluded IS NULL
FOR UPDATE SKIP LOCKED

-- name: coverage_included_signatures
-- Included rows other than ``ids``, with their stored signature (NULL: not assigned yet).
SELECT c.id, c.user_prompt::text AS user_prompt, r.signature FROM {table} c
LEFT JOIN coverage_row r ON r.row_id = c.id
WHERE c.namespace = %(namespace)s AND c.included IS NOT NULL AND c.excluded IS NULL
  AND NOT (c.id = ANY(%(ids)s))
ORDER BY c.id

-- name: coverage_prompts
SELECT c.id, c.user_prompt::text AS user_prompt, r.signature FROM {table} c
LEFT JOIN coverage_row r ON r.row_id = c.id
WHERE c.namespace = %(namespace)s AND c.id = ANY(%(ids)s)
ORDER BY c.id

-- name: coverage_export_rows
-- The rows an export with these filters writes, for --dedupe near: export_rows itself,
-- so rows it leaves out (unaccepted flags, excluded, the student's own) never win a group.
SELECT c.id, c.user_prompt::text AS user_prompt, c.times_seen,
       c.corrected_response IS NOT NULL AS corrected, r.signature
FROM ({export}) AS q
JOIN {table} c ON c.namespace = %(namespace)s AND c.id = q.id
LEFT JOIN coverage_row r ON r.row_id = c.id
ORDER BY c.id
