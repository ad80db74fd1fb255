-- Failed rows adopted from a seed-era table have no finished_at, so pruning (which goes by
-- finished_at) would keep them forever. They get the time of this migration: kept for the
-- whole retention from the move, so there is time to look at them, then pruned.
UPDATE jobs SET finished_at = UTC_TIMESTAMP(6)
 WHERE status IN ('processed', 'failed') AND finished_at IS NULL
