-- Published dataset versions, newest first.
SELECT version, kind, row_count, content_hash, config_hash, created_at
FROM datasets
ORDER BY number DESC;
