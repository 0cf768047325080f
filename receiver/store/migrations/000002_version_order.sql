-- Order under retries (docs/architecture.md, "Schema and write path"): when
-- a receiver first received the stored version of an appointment, and which
-- history rows are versions that arrived after a newer one and were not
-- applied. Rows written before this migration have no received time (NULL):
-- any version may replace them, as before. Additive, so receivers of the
-- previous release keep writing during a rolling upgrade.

-- +goose Up
ALTER TABLE appointments ADD COLUMN version_received_at timestamptz;
ALTER TABLE appointment_history
    ADD COLUMN version_received_at timestamptz,
    ADD COLUMN superseded boolean NOT NULL DEFAULT false;

-- +goose Down
ALTER TABLE appointment_history DROP COLUMN superseded, DROP COLUMN version_received_at;
ALTER TABLE appointments DROP COLUMN version_received_at;
