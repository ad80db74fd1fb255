-- The seed's utf8 (3-byte) columns cannot hold emoji or other 4-byte characters that
-- serde_json writes unescaped. Binary collation: names, queues and statuses compare exactly.
ALTER TABLE jobs CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin
