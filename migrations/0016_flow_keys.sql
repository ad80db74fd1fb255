-- One row per flow key: what claims of the key lock while they count its running jobs
-- and its starts, the limits last seen (for the sweep), a pause a job asked for (a
-- service's Retry-After), and when its blocked jobs are to be looked at again.
CREATE TABLE IF NOT EXISTS lightjobs_flow_keys (
    flow_key VARCHAR(191) NOT NULL,
    concurrency INT UNSIGNED NULL,
    rate INT UNSIGNED NULL,
    window_ms INT UNSIGNED NULL,
    paused_until DATETIME(6) NULL,
    recheck_at DATETIME(6) NULL,
    used_at DATETIME(6) NOT NULL,
    PRIMARY KEY (flow_key),
    KEY flow_recheck (recheck_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The starts of rate-limited keys within their window (older ones are deleted as claims
-- of the key go by): a sliding window, not a counter that resets.
CREATE TABLE IF NOT EXISTS lightjobs_flow_starts (
    flow_key VARCHAR(191) NOT NULL,
    started_at DATETIME(6) NOT NULL,
    job_id BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (flow_key, started_at, job_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
