-- Everything a retrying, multi-queue, multi-worker queue needs, in one ALTER so the table is
-- rebuilt once. Times become DATETIME(6) and are written in UTC by lightjobs.
ALTER TABLE jobs
    MODIFY id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    MODIFY name VARCHAR(128) NOT NULL,
    MODIFY payload MEDIUMTEXT NOT NULL,
    MODIFY status VARCHAR(16) NOT NULL DEFAULT 'pending',
    MODIFY scheduled_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    MODIFY created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    ADD COLUMN queue VARCHAR(64) NOT NULL DEFAULT 'default' AFTER name,
    ADD COLUMN priority SMALLINT NOT NULL DEFAULT 0 AFTER queue,
    ADD COLUMN attempts INT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN max_attempts INT UNSIGNED NOT NULL DEFAULT 3,
    ADD COLUMN last_error TEXT NULL,
    ADD COLUMN reserved_by VARCHAR(128) NULL,
    ADD COLUMN reserved_at DATETIME(6) NULL,
    ADD COLUMN finished_at DATETIME(6) NULL,
    -- The claim: WHERE queue = ? AND status = 'pending' ORDER BY priority, scheduled_at, id.
    -- Equality on the first two columns and the ORDER BY on the rest, so a claim reads (and
    -- locks) only the rows it returns. The seed's KEY status stays; the claim forces this one.
    ADD KEY jobs_claim (queue, status, priority, scheduled_at, id),
    -- Pruning and "recently finished" listings.
    ADD KEY jobs_finished (status, finished_at);

-- Rows left by a seed-era (Lightpack) worker: anything not yet finished becomes pending.
UPDATE jobs SET status = 'pending'
 WHERE status NOT IN ('pending', 'running', 'processed', 'failed')
