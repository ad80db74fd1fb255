-- A process that stops while the database refuses to take its releases (the runs its
-- shutdown cut short) leaves them here, with when it stopped: every rescuer then takes
-- its jobs at once and gives those runs their attempt back, since they never failed.
-- Online: adding NULL columns at the end changes no row.
ALTER TABLE lightjobs_workers ADD COLUMN left_behind TEXT NULL,
    ADD COLUMN stopped_at DATETIME(6) NULL, ALGORITHM=INPLACE, LOCK=NONE
