-- Batches and dependencies. A batch is a row here; its jobs carry its id (`batch_id`),
-- and the index finds a batch's first unfinished job in one dive, so the check "was that
-- the last one?" costs the same for a batch of ten as of a million, and no completion
-- writes to the batch row. A job that waits (status `awaiting`) names what it waits for:
-- a job (`after_job`) or a batch (`after_batch`), and when it may run (`after_outcome`:
-- `success`, `failure` or `complete`; batch callbacks are such jobs). The two small
-- indexes find a finished job's or batch's waiters; they never change after the INSERT.
-- Online: the table is new, the columns are nullable at the end (instant where the
-- server can), and the indexes are built in place while writes go on.
CREATE TABLE IF NOT EXISTS lightjobs_batches (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    description VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    created_at DATETIME(6) NOT NULL,
    finished_at DATETIME(6) NULL,
    outcome VARCHAR(16) NULL,
    PRIMARY KEY (id),
    KEY batches_open (finished_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

ALTER TABLE jobs
    ADD COLUMN batch_id BIGINT UNSIGNED NULL,
    ADD COLUMN after_job BIGINT UNSIGNED NULL,
    ADD COLUMN after_batch BIGINT UNSIGNED NULL,
    ADD COLUMN after_outcome VARCHAR(16) NULL,
    ADD KEY jobs_batch (batch_id, finished_at),
    ADD KEY jobs_after_job (after_job),
    ADD KEY jobs_after_batch (after_batch),
    ALGORITHM=INPLACE, LOCK=NONE
