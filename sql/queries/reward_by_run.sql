-- Mean reward and failure count per scoring run.
SELECT run_id, count(*) AS responses, count(reward) AS rewarded,
       round(avg(reward), 2) AS mean_reward, round(avg(faithfulness), 2) AS mean_faithfulness
FROM rewards
GROUP BY run_id
ORDER BY run_id;
