-- writeSQL (built by receiver/store/write.go from columns.go)

WITH delivery AS (
    INSERT INTO webhook_deliveries (ehr, request_id, received_at, body_sha256, item_count, outcome, status_code)
    SELECT $1, request_id, received_at, body_sha256, item_count, outcome, status_code
    FROM unnest($2::text[], $3::timestamptz[], $4::bytea[], $5::integer[], $6::text[], $7::integer[])
        WITH ORDINALITY AS d(request_id, received_at, body_sha256, item_count, outcome, status_code, req)
    ORDER BY req
    RETURNING id, received_at
), delivery_in AS (
    SELECT id AS delivery_id, received_at, row_number() OVER (ORDER BY id) AS req FROM delivery
), entry AS (
    SELECT u.*, d.delivery_id,
        COALESCE(u.version_received_at < d.received_at AND u.version_received_at < (
            SELECT a.version_received_at FROM appointments a
            WHERE a.ehr = $1 AND a.external_id = u.id
        ), false) AS superseded
    FROM unnest(
        $8::integer[], $9::text[], $10::text[], $11::text[], $12::timestamptz[], $13::date[], $14::timestamptz[],
        $15::text[], $16::integer[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[],
        $22::text[], $23::bytea[], $24::timestamptz[], $25::text[], $26::text[], $27::text[],
        $28::text[], $29::date[], $30::text[], $31::text[], $32::text[], $33::text[], $34::text[],
        $35::text[]
    ) WITH ORDINALITY AS u(
        req, id, status, status_raw, start_time, start_date, created_time, type, duration_minutes, reason,
        notes, location_name, encounter_id, encounter_reason, department_id, content_hash,
        version_received_at, patient_id, pat_first_name, pat_middle_name, pat_last_name,
        pat_birth_date, pat_gender, pat_phone, pat_email, practitioner_id, pra_first_name,
        pra_last_name,
        ord
    )
    JOIN delivery_in d ON d.req = u.req
    WHERE NOT EXISTS (
        SELECT 1 FROM appointment_history h
        WHERE h.ehr = $1 AND h.appointment_external_id = u.id AND h.content_hash = u.content_hash
        OFFSET 0
    )
), patient AS (
    INSERT INTO patients AS p (ehr, external_id, first_name, middle_name, last_name, birth_date, gender, phone, email)
    SELECT DISTINCT ON (patient_id)
        $1, patient_id, pat_first_name, pat_middle_name, pat_last_name, pat_birth_date, pat_gender,
        pat_phone, pat_email
    FROM entry
    WHERE NOT superseded
    ORDER BY patient_id, ord DESC
    ON CONFLICT (ehr, external_id) DO UPDATE SET
        first_name = EXCLUDED.first_name, middle_name = EXCLUDED.middle_name,
        last_name = EXCLUDED.last_name, birth_date = EXCLUDED.birth_date, gender = EXCLUDED.gender,
        phone = EXCLUDED.phone, email = EXCLUDED.email,
        updated_at = now()
    WHERE (p.first_name, p.middle_name, p.last_name, p.birth_date, p.gender, p.phone, p.email)
        IS DISTINCT FROM (EXCLUDED.first_name, EXCLUDED.middle_name, EXCLUDED.last_name, EXCLUDED.birth_date,
        EXCLUDED.gender, EXCLUDED.phone, EXCLUDED.email)
    RETURNING 1
), practitioner AS (
    INSERT INTO practitioners AS r (ehr, external_id, first_name, last_name)
    SELECT DISTINCT ON (practitioner_id)
        $1, practitioner_id, pra_first_name, pra_last_name
    FROM entry
    WHERE NOT superseded
    ORDER BY practitioner_id, ord DESC
    ON CONFLICT (ehr, external_id) DO UPDATE SET
        first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name,
        updated_at = now()
    WHERE (r.first_name, r.last_name)
        IS DISTINCT FROM (EXCLUDED.first_name, EXCLUDED.last_name)
    RETURNING 1
), appointment AS (
    INSERT INTO appointments AS a (
        ehr, external_id, patient_external_id, practitioner_external_id, status, status_raw, start_time,
        start_date, created_time, type, duration_minutes, reason, notes, location_name, encounter_id,
        encounter_reason, department_id, content_hash, version_received_at, delivery_id)
    SELECT
        $1, id, patient_id, practitioner_id, status, status_raw, start_time, start_date, created_time,
        type, duration_minutes, reason, notes, location_name, encounter_id, encounter_reason,
        department_id, content_hash, version_received_at, delivery_id
    FROM entry
    WHERE NOT superseded AND (SELECT count(*) FROM patient) >= 0 AND (SELECT count(*) FROM practitioner) >= 0
    ORDER BY id
    ON CONFLICT (ehr, external_id) DO UPDATE SET
        patient_external_id = EXCLUDED.patient_external_id,
        practitioner_external_id = EXCLUDED.practitioner_external_id, status = EXCLUDED.status,
        status_raw = EXCLUDED.status_raw, start_time = EXCLUDED.start_time,
        start_date = EXCLUDED.start_date, created_time = EXCLUDED.created_time, type = EXCLUDED.type,
        duration_minutes = EXCLUDED.duration_minutes, reason = EXCLUDED.reason,
        notes = EXCLUDED.notes, location_name = EXCLUDED.location_name,
        encounter_id = EXCLUDED.encounter_id, encounter_reason = EXCLUDED.encounter_reason,
        department_id = EXCLUDED.department_id, content_hash = EXCLUDED.content_hash,
        version_received_at = EXCLUDED.version_received_at,
        delivery_id = EXCLUDED.delivery_id, updated_at = now()
    WHERE a.content_hash <> EXCLUDED.content_hash
    RETURNING external_id, status, start_time, content_hash, delivery_id, version_received_at
), history AS (
    INSERT INTO appointment_history (ehr, appointment_external_id, status, start_time, content_hash, delivery_id, version_received_at, superseded)
    SELECT $1, external_id, status, start_time, content_hash, delivery_id, version_received_at, false
    FROM appointment
    UNION ALL
    SELECT $1, id, status, start_time, content_hash, delivery_id, version_received_at, true
    FROM entry
    WHERE superseded
    ORDER BY external_id
    ON CONFLICT DO NOTHING
), quarantine AS (
    INSERT INTO quarantined_entries (ehr, delivery_id, entry_index, raw, errors)
    SELECT $1, d.delivery_id, q.entry_index, q.raw, q.errors
    FROM unnest($36::integer[], $37::integer[], $38::bytea[], $39::jsonb[]) AS q(req, entry_index, raw, errors)
    JOIN delivery_in d ON d.req = q.req
    RETURNING delivery_id
)
SELECT d.req,
    (SELECT count(*) FROM appointment a WHERE a.delivery_id = d.delivery_id),
    (SELECT count(*) FROM entry e WHERE e.superseded AND e.delivery_id = d.delivery_id),
    (SELECT count(*) FROM quarantine q WHERE q.delivery_id = d.delivery_id)
FROM delivery_in d
ORDER BY d.req

-- recordSQL

INSERT INTO webhook_deliveries (ehr, request_id, received_at, body_sha256, item_count, outcome, status_code)
SELECT $1, request_id, received_at, body_sha256, item_count, outcome, status_code
FROM unnest($2::text[], $3::timestamptz[], $4::bytea[], $5::integer[], $6::text[], $7::integer[]) AS d(request_id, received_at, body_sha256, item_count, outcome, status_code)
