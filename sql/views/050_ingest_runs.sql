-- Intake per run: objects read, prompts landed, records rejected.
CREATE OR REPLACE VIEW ingest_runs AS
SELECT run_id, min(ingested_at) AS started_at, count(*) AS objects,
       sum(size) AS bytes, sum(n_prompts) AS prompts, sum(n_rejects) AS rejects
FROM ingested_objects
GROUP BY run_id;
