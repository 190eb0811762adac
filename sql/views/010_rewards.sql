-- One row per scored response: the four LongReward dimensions and their mean.
-- reward is NULL unless all four dimensions have a score; failure_reason says why.
CREATE OR REPLACE VIEW rewards AS
SELECT
    response_id,
    any_value(prompt_id) AS prompt_id,
    max(score) FILTER (WHERE dimension = 'helpfulness') AS helpfulness,
    max(score) FILTER (WHERE dimension = 'logicality') AS logicality,
    max(score) FILTER (WHERE dimension = 'faithfulness') AS faithfulness,
    max(score) FILTER (WHERE dimension = 'completeness') AS completeness,
    CASE WHEN count(score) = 4 THEN sum(score) / 4 END AS reward,
    CASE
        WHEN count(score) = 4 THEN NULL
        WHEN count(*) < 4 THEN 'not scored yet: ' || (4 - count(*))::VARCHAR || ' dimension(s) missing'
        ELSE string_agg(dimension || ': ' || coalesce(error, status), '; ' ORDER BY dimension)
             FILTER (WHERE score IS NULL)
    END AS failure_reason,
    max(run_id) AS run_id
FROM judgments
WHERE dimension IN ('helpfulness', 'logicality', 'faithfulness', 'completeness')
GROUP BY response_id;
