-- A queue's concurrency limit across every process (NULL: none). Claims on a limited queue
-- lock its row, count its running jobs and claim at most the difference.
ALTER TABLE lightjobs_queues ADD COLUMN global_limit INT UNSIGNED NULL
