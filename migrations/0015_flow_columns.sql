-- Flow control (per-key concurrency and rate limits): each job may carry a key and the
-- limits of its key. `blocked` rows (over a limit) wait out of the claim range; the index
-- counts a key's running jobs and finds its oldest blocked ones without reading others.
-- Online: the columns are added instantly and the index is built in place, writes going
-- on (MariaDB 10.3+ and MySQL 8 both allow INPLACE with LOCK=NONE here).
ALTER TABLE jobs
    ADD COLUMN flow_key VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    ADD COLUMN flow_concurrency INT UNSIGNED NULL,
    ADD COLUMN flow_rate INT UNSIGNED NULL,
    ADD COLUMN flow_window_ms INT UNSIGNED NULL,
    ADD KEY jobs_flow (flow_key, status, priority, scheduled_at, id),
    ALGORITHM=INPLACE, LOCK=NONE
