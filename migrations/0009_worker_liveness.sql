-- Each worker process records its own heartbeat interval and staleness, so that every
-- rescuer judges it by its own settings rather than the rescuer's. NULL (rows of older
-- versions) falls back to the rescuer's staleness.
ALTER TABLE lightjobs_workers ADD COLUMN stale_after_us BIGINT UNSIGNED NULL,
    ADD COLUMN heartbeat_us BIGINT UNSIGNED NULL
