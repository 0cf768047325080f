-- Schema of architecture.md, "Schema and write path". Every row carries ehr; natural keys are (ehr, external id).
-- Patient data lives only in patients/appointments/quarantined_entries;
-- webhook_deliveries holds none.

-- +goose Up
CREATE TABLE webhook_deliveries (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ehr         text        NOT NULL,
    request_id  text        NOT NULL,
    received_at timestamptz NOT NULL,
    body_sha256 bytea       NOT NULL CHECK (octet_length(body_sha256) = 32),
    item_count  integer     NOT NULL CHECK (item_count >= 0),
    outcome     text        NOT NULL,
    status_code integer     NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_ehr_received_at ON webhook_deliveries (ehr, received_at);
CREATE INDEX webhook_deliveries_request_id ON webhook_deliveries (request_id);

CREATE TABLE patients (
    ehr         text        NOT NULL,
    external_id text        NOT NULL,
    first_name  text        NOT NULL,
    middle_name text,
    last_name   text        NOT NULL,
    birth_date  date        NOT NULL,
    gender      text        NOT NULL,
    phone       text,
    email       text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ehr, external_id)
);

CREATE TABLE practitioners (
    ehr         text        NOT NULL,
    external_id text        NOT NULL,
    first_name  text        NOT NULL,
    last_name   text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ehr, external_id)
);

CREATE TABLE appointments (
    ehr                      text        NOT NULL,
    external_id              text        NOT NULL,
    patient_external_id      text        NOT NULL,
    practitioner_external_id text        NOT NULL,
    status                   text        NOT NULL,
    status_raw               text        NOT NULL,
    start_time               timestamptz NOT NULL,
    start_date               date        NOT NULL,
    created_time             timestamptz NOT NULL,
    type                     text        NOT NULL,
    duration_minutes         integer CHECK (duration_minutes BETWEEN 0 AND 1440),
    reason                   text,
    notes                    text,
    location_name            text,
    encounter_id             text,
    encounter_reason         text,
    department_id            text,
    content_hash             bytea       NOT NULL CHECK (octet_length(content_hash) = 32),
    delivery_id              bigint      NOT NULL REFERENCES webhook_deliveries (id),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ehr, external_id),
    FOREIGN KEY (ehr, patient_external_id) REFERENCES patients (ehr, external_id),
    FOREIGN KEY (ehr, practitioner_external_id) REFERENCES practitioners (ehr, external_id)
);
CREATE INDEX appointments_patient ON appointments (ehr, patient_external_id);
CREATE INDEX appointments_practitioner_start ON appointments (ehr, practitioner_external_id, start_time);

-- One row per change applied to an appointment. (ehr, appointment, content
-- hash) is unique: a content seen before is never applied again, which makes
-- redeliveries and replays of older versions no-ops (architecture.md, "Schema and write path").
-- No foreign key to appointments: rows are only made from the appointment
-- upsert's RETURNING in the same statement, and that check was half the
-- write statement's time (it locks each just-written appointment row again).
CREATE TABLE appointment_history (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ehr                     text        NOT NULL,
    appointment_external_id text        NOT NULL,
    status                  text        NOT NULL,
    start_time              timestamptz NOT NULL,
    content_hash            bytea       NOT NULL CHECK (octet_length(content_hash) = 32),
    delivery_id             bigint      NOT NULL REFERENCES webhook_deliveries (id),
    applied_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (ehr, appointment_external_id, content_hash)
);
CREATE INDEX appointment_history_delivery ON appointment_history (delivery_id);

CREATE TABLE quarantined_entries (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ehr         text        NOT NULL,
    delivery_id bigint      NOT NULL REFERENCES webhook_deliveries (id),
    entry_index integer     NOT NULL,
    raw         bytea       NOT NULL,
    errors      jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (delivery_id, entry_index)
);
CREATE INDEX quarantined_entries_ehr_created_at ON quarantined_entries (ehr, created_at);

-- +goose Down
DROP TABLE quarantined_entries;
DROP TABLE appointment_history;
DROP TABLE appointments;
DROP TABLE practitioners;
DROP TABLE patients;
DROP TABLE webhook_deliveries;
