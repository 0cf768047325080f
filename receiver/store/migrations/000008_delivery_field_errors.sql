-- A request refused with an errors list (outcome rejected: invalid entries
-- under onInvalid: Reject, 422; invalid_body: malformed JSON, 400, or
-- neither accepted form, 422) keeps its field errors in the delivery log,
-- so that `ehr-operator deliveries show` says why it was refused after the
-- pods' logs are gone (docs/decisions.md, "A refused delivery keeps its
-- first field errors"). field_error_count is how many errors the answer
-- listed; field_errors the first 10 of them (store.MaxFieldErrors), a
-- jsonb array of {index, field, message}, as the answer has them: paths
-- and rules, never a value. Both NULL for a request whose answer listed
-- none, for rows written before this migration, and for rows written by
-- receivers of the previous release during a rolling upgrade (their
-- insert names its columns). Additive, nullable, no default: PostgreSQL
-- changes only the catalog, without rewriting or scanning the table, so
-- the ACCESS EXCLUSIVE lock is held for milliseconds (its wait is bounded
-- by migrations.LockTimeout) and receivers of the previous release keep
-- writing.

-- +goose Up
ALTER TABLE webhook_deliveries ADD COLUMN field_errors jsonb, ADD COLUMN field_error_count integer;

-- +goose Down
ALTER TABLE webhook_deliveries DROP COLUMN field_errors, DROP COLUMN field_error_count;
