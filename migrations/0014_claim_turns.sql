-- Claim turns: the claimers of one queue take turns, a few at a time, instead of all
-- stepping over each other's locked rows at the head of the claim index. A claim locks one
-- turn row of its queue (the process's own, of TURNS per queue) before it reads the head.
CREATE TABLE lightjobs_claim_turns (
    queue VARCHAR(64) NOT NULL,
    turn TINYINT UNSIGNED NOT NULL,
    PRIMARY KEY (queue, turn)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
