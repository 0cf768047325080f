-- Indexes retention needs (docs/architecture.md, "Schema and write path"), built
-- without blocking writes. appointments.delivery_id: deleting a
-- webhook_deliveries row checks the foreign key from appointments, which
-- without it reads the whole table per row. appointment_history.applied_at
-- as BRIN: the history is appended in time order, so a few pages of
-- summaries find the old rows, at almost no cost per insert.

-- +goose NO TRANSACTION
-- +goose Up
CREATE INDEX CONCURRENTLY IF NOT EXISTS appointments_delivery ON appointments (delivery_id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS appointment_history_applied_at ON appointment_history USING brin (applied_at);

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS appointment_history_applied_at;
DROP INDEX CONCURRENTLY IF EXISTS appointments_delivery;
