-- Unique jobs: a dispatch with a key while a job with that key is pending, scheduled or
-- running (or finished less than its unique period ago) returns the existing job. The
-- unique index decides races between processes.
ALTER TABLE jobs
    ADD COLUMN unique_key VARCHAR(191) NULL,
    ADD COLUMN unique_until DATETIME(6) NULL,
    ADD UNIQUE KEY jobs_unique (unique_key);

-- Per-queue state every process reads: paused queues are not claimed from.
CREATE TABLE lightjobs_queues (
    queue VARCHAR(64) NOT NULL,
    paused TINYINT(1) NOT NULL DEFAULT 0,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (queue)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
