-- The history's retention reads its old rows in the order of this index
-- and goes on from where its last batch ended (store.Prune; docs/
-- performance.md, "At a year's volume"). With only migration 4's BRIN,
-- PostgreSQL chose a sequential scan for each 500-row batch (it expects
-- to find old rows at once), which read again every row the batches
-- before it had deleted: at 12 M history rows a first prune slowed from
-- 3,000 to 1,700 rows a second within 4 minutes, a batch's scan growing by
-- a page per 50 rows deleted, and each run's last batch read the whole
-- table. Rows are appended in applied_at order per EHR, so inserts add at
-- the index's right edges. Built CONCURRENTLY, so writes go on
-- meanwhile; a cancelled build's invalid index is dropped and built
-- again, as in migration 4 (its DROP INDEX waits at most 5 s for its lock).

-- +goose NO TRANSACTION
-- +goose Up
-- +goose StatementBegin
DO $$
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    IF EXISTS (
        SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE NOT i.indisvalid AND c.relname = 'appointment_history_ehr_applied_at'
            AND c.relnamespace = current_schema()::regnamespace
    ) THEN
        DROP INDEX appointment_history_ehr_applied_at;
    END IF;
END
$$;
-- +goose StatementEnd
CREATE INDEX CONCURRENTLY IF NOT EXISTS appointment_history_ehr_applied_at
    ON appointment_history (ehr, applied_at, id);

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS appointment_history_ehr_applied_at;
