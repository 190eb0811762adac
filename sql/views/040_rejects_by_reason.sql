-- What went wrong at intake, most frequent first.
CREATE OR REPLACE VIEW rejects_by_reason AS
SELECT reason_code, count(*) AS records, count(DISTINCT source_uri) AS objects,
       any_value(reason) AS example_reason
FROM rejects
GROUP BY reason_code
ORDER BY records DESC;
