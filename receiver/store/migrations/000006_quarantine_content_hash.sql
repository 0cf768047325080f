-- A quarantined entry is kept once while it is pending (docs/decisions.md,
-- "A retried delivery keeps its quarantined entries once"): raw_sha256 is
-- the SHA-256 of raw, the entry exactly as sent, which the write statement
-- computes as it inserts the row; migration 7 makes it unique per EHR
-- among pending entries. Rows written before this migration, and by
-- receivers of the previous release during a rolling upgrade, have none
-- (NULL): they are kept as before, and an entry identical to one of them
-- is kept once more. Retention drops it with raw. Additive (no default, no
-- table rewrite), so receivers of the previous release keep writing.

-- +goose Up
ALTER TABLE quarantined_entries ADD COLUMN raw_sha256 bytea;

-- +goose Down
ALTER TABLE quarantined_entries DROP COLUMN raw_sha256;
