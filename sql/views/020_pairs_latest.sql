-- The most recent pairing decision per prompt (pairs keeps every run's decision).
CREATE OR REPLACE VIEW pairs_latest AS
SELECT *
FROM pairs
QUALIFY row_number() OVER (PARTITION BY prompt_id ORDER BY created_at DESC, run_id DESC) = 1;
