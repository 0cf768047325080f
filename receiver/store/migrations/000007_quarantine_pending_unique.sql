-- One pending quarantined entry per content (docs/decisions.md, "A retried
-- delivery keeps its quarantined entries once"): the write statement
-- inserts with ON CONFLICT DO NOTHING on this index, so a retried delivery
-- (its 200 lost) does not keep its invalid entries again, also when two
-- retries are written by two statements at once. Partial, on the rows a
-- replay would read (QuarantineFilter.Pending): an entry replayed since, or
-- whose content retention dropped, no longer stands in the way of a new
-- copy, which is then the one a replay can act on. NULL hashes (rows of
-- before migration 6) never conflict. Built CONCURRENTLY, so writes go on
-- meanwhile; a cancelled build's invalid index is dropped and built again,
-- as in migration 4 (its DROP INDEX waits at most 5 s for its lock).

-- +goose NO TRANSACTION
-- +goose Up
-- +goose StatementBegin
DO $$
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    IF EXISTS (
        SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE NOT i.indisvalid AND c.relname = 'quarantined_entries_pending_content'
            AND c.relnamespace = current_schema()::regnamespace
    ) THEN
        DROP INDEX quarantined_entries_pending_content;
    END IF;
END
$$;
-- +goose StatementEnd
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS quarantined_entries_pending_content
    ON quarantined_entries (ehr, raw_sha256) WHERE replayed_at IS NULL AND raw IS NOT NULL;

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS quarantined_entries_pending_content;
