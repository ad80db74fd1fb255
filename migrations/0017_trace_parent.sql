-- Trace context from a dispatch to its job: the W3C `traceparent` of the span that
-- dispatched it (`00-<trace id>-<span id>-<flags>`, 55 characters), which the job's span
-- links to. Online: a nullable column at the end is added instantly where the server can
-- (MariaDB 10.3+, MySQL 8.0.12+; INPLACE permits the better algorithm), and in place,
-- writes going on, where it cannot.
ALTER TABLE jobs
    ADD COLUMN trace_parent VARCHAR(55) CHARACTER SET ascii COLLATE ascii_bin NULL,
    ALGORITHM=INPLACE, LOCK=NONE
