-- Cancelling a running job: `JobQueue::cancel` of a `running` row records the request
-- here; the process running the job reads it for its own running ids (by primary key) and
-- stops the run, which then ends `cancelled`. A row whose run gives it back (a retry, a
-- snooze, a shutdown, a rescue) with a request on it ends `cancelled` instead of waiting
-- again. Online: a nullable column at the end, added instantly where the server can.
ALTER TABLE jobs
    ADD COLUMN cancel_requested_at DATETIME(6) NULL,
    ALGORITHM=INPLACE, LOCK=NONE
