-- Replay and retention (docs/architecture.md, "Schema and write path").
-- replayed_at marks a quarantined entry that `ehr-operator deliveries
-- replay` has stored since; raw may be NULL once retention dropped the
-- entry's content and kept that it happened. Additive: receivers of the
-- previous release keep writing during a rolling upgrade.

-- +goose Up
ALTER TABLE quarantined_entries
    ADD COLUMN replayed_at timestamptz,
    ALTER COLUMN raw DROP NOT NULL;

-- +goose Down
DELETE FROM quarantined_entries WHERE raw IS NULL;
ALTER TABLE quarantined_entries
    ALTER COLUMN raw SET NOT NULL,
    DROP COLUMN replayed_at;
