-- The errors of a job's failed attempts, newest last, at most ten (a JSON array of
-- {"attempt", "at", "error"}, each error cut to 4,000 characters): what the dashboard's
-- job page shows. `last_error` stays the last one in full. Online: a nullable column at
-- the end, added instantly where the server can.
ALTER TABLE jobs
    ADD COLUMN errors MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    ALGORITHM=INPLACE, LOCK=NONE
