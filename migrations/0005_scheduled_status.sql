-- Jobs due later wait as `scheduled` and are moved to `pending` when due, so that the
-- claim's WHERE is all equalities: a range on scheduled_at after the priority column could
-- not narrow the index and made every claim read (and lock) every delayed job.
UPDATE jobs SET status = 'scheduled'
 WHERE status = 'pending' AND scheduled_at > UTC_TIMESTAMP(6)
