-- Score distribution per run and dimension; failed judgments are counted, never averaged as 0.
CREATE OR REPLACE VIEW score_distribution AS
SELECT
    run_id,
    dimension,
    count(*) AS judgments,
    count(score) AS scored,
    count(*) - count(score) AS failed,
    avg(score) AS mean,
    quantile_cont(score, 0.1) AS p10,
    median(score) AS p50,
    quantile_cont(score, 0.9) AS p90,
    min(score) AS min,
    max(score) AS max
FROM judgments
GROUP BY run_id, dimension;
