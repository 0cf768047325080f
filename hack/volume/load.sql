-- A year's volume, shaped like real data (docs/performance.md, "At a
-- year's volume"), into a freshly migrated database:
--   psql "$DB" -v days=120 -v scale=1 -f hack/volume/load.sql
-- Three EHRs share it: "bench" (60 % of the deliveries; its ids are those
-- of harness.NewGen("x7f3k9"), so hack/volume updates its appointments),
-- "epic-north" (30 %) and "cerner-west" (10 %). Per scale: 10 M deliveries
-- over :days days ending now (ids in time order), 95 % stored, 2 %
-- quarantined (1.5 entries each, 10 % replayed since), 2 % rejected with
-- field errors, 1 % invalid_body; 12 M history rows in time order, 1.2 per
-- stored delivery; 2 M appointments (bench 1.2 M) and half as many
-- patients, 500 practitioners per EHR. Request ids are UUIDs,
-- appointment ids 14-18 characters. Secondary indexes are dropped during
-- the load and built again after it, under their own names, and foreign
-- keys are not checked (session_replication_role): the rows satisfy them.
\set ON_ERROR_STOP on
\timing on
SET session_replication_role = replica;
SET maintenance_work_mem = '512MB';
SELECT set_config('vol.n', (10000000 * :scale)::bigint::text, false),
    set_config('vol.h', (12000000 * :scale)::bigint::text, false),
    set_config('vol.days', :'days', false);

-- ehr of delivery i: i % 10 in 0-5 bench, 6-8 epic-north, 9 cerner-west.
-- Outcome: stored unless (i / 10) % 20 = 0; then by (i / 200) % 5.
CREATE TEMP TABLE ehrs (ehr text, tag text, slot int[], appts bigint);
INSERT INTO ehrs VALUES
    ('bench', 'x7f3k9', '{0,1,2,3,4,5}', 1200000 * :scale),
    ('epic-north', 'en4410', '{6,7,8}', 600000 * :scale),
    ('cerner-west', 'cw2', '{9}', 200000 * :scale);
CREATE FUNCTION pg_temp.ehr_of(i bigint) RETURNS text IMMUTABLE LANGUAGE sql AS
$$ SELECT CASE WHEN i % 10 < 6 THEN 'bench' WHEN i % 10 < 9 THEN 'epic-north' ELSE 'cerner-west' END $$;
CREATE FUNCTION pg_temp.outcome_of(i bigint) RETURNS text IMMUTABLE LANGUAGE sql AS
$$ SELECT CASE WHEN (i / 10) % 20 <> 0 THEN 'stored' ELSE (ARRAY['quarantined','quarantined','rejected','rejected','invalid_body'])[(i / 200) % 5 + 1] END $$;
CREATE FUNCTION pg_temp.at_of(i bigint) RETURNS timestamptz IMMUTABLE LANGUAGE sql AS
$$ SELECT now() - make_interval(days => current_setting('vol.days')::int)
    + (i::float8 / current_setting('vol.n')::bigint) * make_interval(days => current_setting('vol.days')::int) $$;
-- A stored delivery of the EHR at about fraction f of the period.
CREATE FUNCTION pg_temp.stored_near(f float8, slot int[]) RETURNS bigint IMMUTABLE LANGUAGE sql AS
$$ SELECT (k - k % 10 + slot[1 + (k % array_length(slot, 1))]) + CASE WHEN (k / 10) % 20 = 0 THEN 10 ELSE 0 END
   FROM (SELECT greatest(1, least(current_setting('vol.n')::bigint - 20, (f * current_setting('vol.n')::bigint)::bigint)) AS k) x $$;
CREATE FUNCTION pg_temp.h(x bigint) RETURNS bigint IMMUTABLE LANGUAGE sql AS
$$ SELECT ('x' || substr(md5(x::text), 1, 15))::bit(60)::bigint $$;

-- Drop the secondary indexes and the unique constraints nothing refers to.
CREATE TEMP TABLE rebuild AS
SELECT pg_get_indexdef(i.indexrelid) AS ddl,
    format('DROP INDEX %I', c.relname) AS drop
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid::regclass::text IN ('webhook_deliveries', 'appointment_history', 'appointments', 'patients', 'quarantined_entries')
    AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
UNION ALL
SELECT format('ALTER TABLE %s ADD CONSTRAINT %I %s', k.conrelid::regclass, k.conname, pg_get_constraintdef(k.oid)),
    format('ALTER TABLE %s DROP CONSTRAINT %I', k.conrelid::regclass, k.conname)
FROM pg_constraint k
WHERE k.contype = 'u' AND k.conrelid::regclass::text IN ('appointment_history', 'quarantined_entries');
SELECT drop FROM rebuild \gexec

INSERT INTO webhook_deliveries (id, ehr, request_id, received_at, body_sha256, item_count, outcome, status_code,
    recorded_at, field_errors, field_error_count)
OVERRIDING SYSTEM VALUE
SELECT i, pg_temp.ehr_of(i),
    (substr(m, 1, 8) || '-' || substr(m, 9, 4) || '-4' || substr(m, 14, 3) || '-a' || substr(m, 18, 3) || '-' || substr(m, 21, 12)),
    pg_temp.at_of(i), sha256(int8send(i)), 1 + (i * 7) % 10, o,
    CASE o WHEN 'stored' THEN 200 WHEN 'quarantined' THEN 200 WHEN 'rejected' THEN 422 ELSE 400 END,
    pg_temp.at_of(i),
    CASE WHEN o = 'rejected' THEN '[{"index":1,"field":"appointments[1].patient.birth_date","message":"must be a real calendar date"}]'::jsonb END,
    CASE WHEN o = 'rejected' THEN 1 END
FROM generate_series(1, current_setting('vol.n')::bigint) i,
    LATERAL (SELECT md5(i::text) AS m, pg_temp.outcome_of(i) AS o) x;

INSERT INTO practitioners (ehr, external_id, first_name, last_name)
SELECT e.ehr, 'prov-' || p, 'John', 'Smith' FROM ehrs e, generate_series(0, 499) p;

INSERT INTO patients (ehr, external_id, first_name, middle_name, last_name, birth_date, gender, phone, email, version_received_at)
SELECT e.ehr, 'pat-' || e.tag || '-' || n, 'Ann', NULL, 'Roe', date '1950-01-01' + (n % 20000)::int, 'Female',
    '555-010-' || lpad((n % 10000)::text, 4, '0'), NULL, now() - interval '1 day'
FROM ehrs e, generate_series(0, e.appts / 2 - 1) n
ORDER BY 1, 2;

-- An appointment's current version: a stored delivery of its EHR, more
-- likely recent (the square root leans towards the end).
INSERT INTO appointments (ehr, external_id, patient_external_id, practitioner_external_id, status, status_raw,
    start_time, start_date, created_time, type, duration_minutes, reason, notes, location_name, encounter_id,
    encounter_reason, department_id, content_hash, delivery_id, version_received_at)
SELECT e.ehr, 'apt-' || e.tag || '-' || n, 'pat-' || e.tag || '-' || (n % (e.appts / 2)), 'prov-' || (n % 500),
    s, s, t, t::date, t - interval '10 days', 'Follow-up', 30, 'Check-up', NULL, 'Main Clinic', 'enc-' || n,
    'Follow-up', 'dept-01', sha256(int8send(-n) || convert_to(e.ehr, 'UTF8')), d, pg_temp.at_of(d)
FROM ehrs e, generate_series(0, e.appts - 1) n,
    LATERAL (SELECT pg_temp.stored_near(sqrt((pg_temp.h(n) % 1000000) / 1e6), e.slot) AS d,
        (ARRAY['booked','confirmed','arrived','fulfilled','cancelled'])[1 + n % 5] AS s,
        now() - interval '100 days' + (n % 2000) * interval '2 hours' AS t) x
ORDER BY 1, 2;

-- History: row j belongs to the stored delivery at fraction j/H of the
-- period, so ids and applied_at follow time as the receiver writes them.
INSERT INTO appointment_history (id, ehr, appointment_external_id, status, start_time, content_hash, delivery_id,
    applied_at, version_received_at, superseded)
OVERRIDING SYSTEM VALUE
SELECT j, e.ehr, 'apt-' || e.tag || '-' || (pg_temp.h(j) % e.appts), 'booked', now(),
    sha256(int8send(j)), d, pg_temp.at_of(d) + interval '40 ms', pg_temp.at_of(d), false
FROM generate_series(1, current_setting('vol.h')::bigint) j,
    LATERAL (SELECT (ARRAY['bench','bench','bench','bench','bench','bench','epic-north','epic-north','epic-north','cerner-west'])[1 + j % 10] AS ehr) w
    JOIN ehrs e USING (ehr),
    LATERAL (SELECT pg_temp.stored_near(j::float8 / current_setting('vol.h')::bigint, e.slot) AS d) x;

-- 1.5 entries per quarantined delivery, about 700 bytes each.
INSERT INTO quarantined_entries (ehr, delivery_id, entry_index, raw, errors, created_at, replayed_at, raw_sha256)
SELECT d.ehr, d.id, k, r, '[{"index":0,"field":"appointments[0].patient.birth_date","message":"must not be in the future"}]',
    d.received_at, CASE WHEN d.id % 10 = 3 THEN d.received_at + interval '2 days' END, sha256(r)
FROM webhook_deliveries d, generate_series(0, (d.id / 200) % 2) k,
    LATERAL (SELECT convert_to(format('{"appointment":{"id":"apt-q-%s-%s","status":"booked","start_time":"03/10/2026 14:30"},"patient":{"id":"pat-q-%s","first_name":"Ann","last_name":"Roe","birth_date":"05/15/2090"},"practitioner":{"id":"prov-1","first_name":"John","last_name":"Smith"},"location":{"name":"Main Clinic"},"notes":"%s"}',
        d.id, k, d.id, repeat('x', 400)), 'UTF8') AS r) q
WHERE d.outcome = 'quarantined'
ORDER BY d.id, k;

SELECT ddl FROM rebuild \gexec
SELECT setval(pg_get_serial_sequence('webhook_deliveries', 'id'), (SELECT max(id) FROM webhook_deliveries));
SELECT setval(pg_get_serial_sequence('appointment_history', 'id'), (SELECT max(id) FROM appointment_history));
RESET session_replication_role;
VACUUM ANALYZE;
