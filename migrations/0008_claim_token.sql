-- Set when a dispatch hands its job straight to an idle worker of the same process (the
-- row is inserted already `running`): if the INSERT's reply is lost, the dispatcher finds
-- exactly that row by its token and gives it back.
ALTER TABLE jobs ADD COLUMN claim_token BIGINT UNSIGNED NULL
