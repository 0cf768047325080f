-- Order under retries for patients and practitioners, as 000002 gave
-- appointments: when a receiver first received the version of the entry
-- that last changed the row. A retried or replayed entry (a version first
-- received before its request) no longer rolls back a patient that a newer
-- delivery, naming another appointment, changed since. Rows written before
-- this migration have none (NULL): any version may replace them, as before.
-- Additive, so receivers of the previous release keep writing during a
-- rolling upgrade (they leave the column as it is).

-- +goose Up
ALTER TABLE patients ADD COLUMN version_received_at timestamptz;
ALTER TABLE practitioners ADD COLUMN version_received_at timestamptz;

-- +goose Down
ALTER TABLE practitioners DROP COLUMN version_received_at;
ALTER TABLE patients DROP COLUMN version_received_at;
