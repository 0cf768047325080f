-- Indexes retention needs (docs/architecture.md, "Schema and write path"),
-- built without blocking writes. appointments.delivery_id: deleting a
-- webhook_deliveries row checks the foreign key from appointments, which
-- without it reads the whole table per row. appointment_history.applied_at
-- as BRIN: the history is appended in time order, so a few pages of
-- summaries find the old rows, at almost no cost per insert.
-- A build that was cancelled (a migration timeout) leaves an invalid index
-- that IF NOT EXISTS would keep: it is dropped first, and built again.
-- That DROP INDEX takes the table's ACCESS EXCLUSIVE lock, so behind a long
-- transaction it would queue every writer: it waits at most 5 s (the
-- migrations' LockTimeout, migrations.go), then fails and is tried again.

-- +goose NO TRANSACTION
-- +goose Up
-- +goose StatementBegin
DO $$
DECLARE
    name text;
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    FOR name IN
        SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE NOT i.indisvalid AND c.relname IN ('appointments_delivery', 'appointment_history_applied_at')
            AND c.relnamespace = current_schema()::regnamespace
    LOOP
        EXECUTE format('DROP INDEX %I', name);
    END LOOP;
END
$$;
-- +goose StatementEnd
CREATE INDEX CONCURRENTLY IF NOT EXISTS appointments_delivery ON appointments (delivery_id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS appointment_history_applied_at ON appointment_history USING brin (applied_at);

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS appointment_history_applied_at;
DROP INDEX CONCURRENTLY IF EXISTS appointments_delivery;
