-- What a job carries beside its payload: tags (comma-joined, each 1–64 of
-- [A-Za-z0-9_.:-]) and a small JSON metadata object, both set at dispatch and handed to
-- the job; and the JSON output a run records. Online: nullable columns at the end, added
-- instantly where the server can (MariaDB 10.3+, MySQL 8.0.12+), in place otherwise.
ALTER TABLE jobs
    ADD COLUMN tags VARCHAR(650) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    ADD COLUMN meta TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    ADD COLUMN output MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    ALGORITHM=INPLACE, LOCK=NONE
