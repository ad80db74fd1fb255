-- Push wake-up across processes: an idle worker process waits inside `SELECT SLEEP` on a
-- connection of its own and registers that connection here (its id, and the server and
-- server start it belongs to, since a connection id means something only on the node that
-- gave it and until that node restarts). A dispatcher in another process `KILL QUERY`s one
-- of them after its commit, and the sleeper claims at once instead of at its next poll.
-- Online: adding NULL columns at the end changes no row.
ALTER TABLE lightjobs_workers ADD COLUMN wake_conn BIGINT UNSIGNED NULL,
    ADD COLUMN wake_node VARCHAR(64) NULL,
    ADD COLUMN wake_boot BIGINT NULL, ALGORITHM=INPLACE, LOCK=NONE
