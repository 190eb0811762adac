-- Every rejected record with where it came from and why.
SELECT source_uri, line, reason_code, reason
FROM rejects
ORDER BY source_uri, line NULLS FIRST;
