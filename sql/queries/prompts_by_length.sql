-- How long are the contexts we ingest? Prompts per 8k-token bucket.
SELECT (context_tokens // 8192) * 8 AS bucket_k_tokens, count(*) AS prompts,
       round(avg(context_tokens)) AS mean_tokens
FROM prompts
GROUP BY ALL
ORDER BY bucket_k_tokens;
