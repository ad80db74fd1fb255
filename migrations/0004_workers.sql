-- One row per running worker process, refreshed by its heartbeat. The rescuer returns jobs
-- held by a process whose heartbeat is stale to `pending`.
CREATE TABLE lightjobs_workers (
    id VARCHAR(128) NOT NULL,
    host VARCHAR(255) NOT NULL,
    pid INT UNSIGNED NOT NULL,
    queues TEXT NOT NULL,
    started_at DATETIME(6) NOT NULL,
    heartbeat_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    KEY lightjobs_workers_heartbeat (heartbeat_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
