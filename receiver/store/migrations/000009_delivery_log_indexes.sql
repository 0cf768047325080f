-- Indexes `ehr-operator deliveries` needs at volume (docs/performance.md,
-- "At a year's volume"): at 10 M deliveries, `list` without --ehr read
-- and sorted the whole table (9.2 s), and --outcome, --since without
-- --ehr, and an outcome the EHR never had read it too (0.8-1.0 s each,
-- 1.6 GB); 0.03-4 ms with them.
-- webhook_deliveries_received_at: the list's order across EHRs, and
-- --since/--until without --ehr. webhook_deliveries_outcome: every outcome
-- but stored (5 % of the rows, the ones an SRE looks for: rejected,
-- quarantined, unavailable), in the list's order; a stored delivery's
-- insert does not touch it. `--outcome stored` reads the other two.
-- Built CONCURRENTLY, so writes go on meanwhile (12 s at 10 M rows; 31 s
-- beside writes at full speed, whose p99 rose to 206 ms, no request
-- failing); a cancelled build's invalid index is dropped and built again,
-- as in migration 4 (its DROP INDEX waits at most 5 s for its lock).

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
        WHERE NOT i.indisvalid AND c.relname IN ('webhook_deliveries_received_at', 'webhook_deliveries_outcome')
            AND c.relnamespace = current_schema()::regnamespace
    LOOP
        EXECUTE format('DROP INDEX %I', name);
    END LOOP;
END
$$;
-- +goose StatementEnd
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_deliveries_received_at ON webhook_deliveries (received_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_deliveries_outcome ON webhook_deliveries (outcome, received_at)
    WHERE outcome <> 'stored';

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS webhook_deliveries_outcome;
DROP INDEX CONCURRENTLY IF EXISTS webhook_deliveries_received_at;
