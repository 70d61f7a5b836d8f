-- 0001_init.sql: the xreg registry schema (patients, studies, series, instances, rejections),
-- the append-only audit log and the triggers that feed it, and two browsing views.
--
-- Applied by registry_migrate() inside one transaction together with its row in
-- public.schema_migrations, so this file must not contain BEGIN/COMMIT or commands that cannot
-- run in a transaction block. Released migrations are never edited: a changed checksum stops
-- xregd. Roles, grants and the audit hash chain come in later migrations.
--
-- Conventions: bigint identity keys named id; foreign keys named <table>_ref (patient_id is the
-- DICOM Patient ID, not a key); DICOM strings that were empty in the header are NULL, except the
-- patient key (patient_id, issuer_of_patient_id), where '' is a valid value (anonymous patient).

CREATE SCHEMA xreg;
COMMENT ON SCHEMA xreg IS
    'xreg DICOM X-ray registry: received instances, their series, studies and patients, '
    'rejected objects, and the append-only audit log of every change';

-- -----------------------------------------------------------------------------------------------
-- Functions used by the triggers. search_path is pinned so that objects in other schemas cannot
-- stand in for the catalog functions they call.

CREATE FUNCTION xreg.touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION xreg.touch_updated_at() IS
    'BEFORE UPDATE row trigger: sets updated_at to the transaction time';

-- Trigger arguments name the columns that make the row key: the first one always, the others
-- appended as ^^^value when not empty (HL7 CX style, so a patient key reads "12345^^^HOSP").
CREATE FUNCTION xreg.audit_row_change() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old_j jsonb;
    new_j jsonb;
    row_j jsonb;
    k text;
    v text;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_j := to_jsonb(OLD);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_j := to_jsonb(NEW);
    END IF;
    row_j := COALESCE(new_j, old_j);
    k := row_j ->> TG_ARGV[0];
    FOR i IN 1 .. TG_NARGS - 1 LOOP
        v := row_j ->> TG_ARGV[i];
        IF v <> '' THEN
            k := k || '^^^' || v;
        END IF;
    END LOOP;
    INSERT INTO xreg.audit_log (action, table_name, row_key, old_row, new_row)
        VALUES (TG_OP, TG_TABLE_NAME, k, old_j, new_j);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION xreg.audit_row_change() IS
    'AFTER row trigger: writes one xreg.audit_log row (old and new row as jsonb) per change';

CREATE FUNCTION xreg.audit_log_refuse() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'xreg.audit_log is append-only'
        USING ERRCODE = 'insufficient_privilege',
              DETAIL = format('%s on xreg.audit_log is refused; audit records can only be added.',
                              TG_OP);
END
$$;
COMMENT ON FUNCTION xreg.audit_log_refuse() IS
    'BEFORE UPDATE/DELETE/TRUNCATE trigger on xreg.audit_log: always raises (append-only)';

-- -----------------------------------------------------------------------------------------------
-- Audit log

CREATE TABLE xreg.audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    db_role text NOT NULL DEFAULT current_user,
    actor text DEFAULT NULLIF(current_setting('xreg.actor', true), ''),
    action text NOT NULL CHECK (action IN ('INSERT', 'UPDATE', 'DELETE')),
    table_name text NOT NULL,
    row_key text,
    old_row jsonb,
    new_row jsonb,
    txid bigint NOT NULL DEFAULT txid_current()
);
CREATE INDEX audit_log_row_idx ON xreg.audit_log (table_name, row_key);
CREATE INDEX audit_log_txid_idx ON xreg.audit_log (txid);

COMMENT ON TABLE xreg.audit_log IS
    'Append-only record of every INSERT, UPDATE and DELETE on the registry tables, written by '
    'triggers in the same transaction as the change. UPDATE, DELETE and TRUNCATE are refused.';
COMMENT ON COLUMN xreg.audit_log.at IS 'when the change was made (clock time, not transaction start)';
COMMENT ON COLUMN xreg.audit_log.db_role IS 'PostgreSQL role that made the change';
COMMENT ON COLUMN xreg.audit_log.actor IS
    'application context from the xreg.actor setting, e.g. dicom:CR01@10.0.0.5 or cli:alice; '
    'NULL for changes made outside xreg (psql, pgAdmin)';
COMMENT ON COLUMN xreg.audit_log.action IS 'INSERT, UPDATE or DELETE';
COMMENT ON COLUMN xreg.audit_log.table_name IS 'changed table in schema xreg, e.g. instance';
COMMENT ON COLUMN xreg.audit_log.row_key IS
    'natural key of the changed row: a UID, a spool id, or patient_id[^^^issuer]';
COMMENT ON COLUMN xreg.audit_log.old_row IS 'the row before the change (UPDATE, DELETE)';
COMMENT ON COLUMN xreg.audit_log.new_row IS 'the row after the change (INSERT, UPDATE)';
COMMENT ON COLUMN xreg.audit_log.txid IS 'transaction id: rows written together share it';

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON xreg.audit_log
    FOR EACH ROW EXECUTE FUNCTION xreg.audit_log_refuse();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON xreg.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION xreg.audit_log_refuse();

-- -----------------------------------------------------------------------------------------------
-- Registry tables

CREATE TABLE xreg.patient (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id text NOT NULL DEFAULT '',
    issuer_of_patient_id text NOT NULL DEFAULT '',
    patient_name text,
    birth_date date,
    sex text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz,
    CONSTRAINT patient_key UNIQUE (patient_id, issuer_of_patient_id)
);
COMMENT ON TABLE xreg.patient IS
    'One row per (Patient ID, Issuer of Patient ID) seen in received objects. An empty Patient ID '
    'is a valid key: all objects without one share that anonymous patient.';
COMMENT ON COLUMN xreg.patient.patient_id IS 'Patient ID (0010,0020); empty string when absent';
COMMENT ON COLUMN xreg.patient.issuer_of_patient_id IS
    'Issuer of Patient ID (0010,0021); empty string when absent';
COMMENT ON COLUMN xreg.patient.patient_name IS 'Patient''s Name (0010,0010), DICOM PN with ^ separators';
COMMENT ON COLUMN xreg.patient.birth_date IS 'Patient''s Birth Date (0010,0030); NULL if absent or invalid';
COMMENT ON COLUMN xreg.patient.sex IS 'Patient''s Sex (0010,0040): M, F or O';
COMMENT ON COLUMN xreg.patient.created_at IS 'when the first object of this patient was registered';
COMMENT ON COLUMN xreg.patient.updated_at IS 'when the row last changed; NULL if never';

CREATE TABLE xreg.study (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    study_instance_uid text NOT NULL UNIQUE CHECK (study_instance_uid <> ''),
    patient_ref bigint NOT NULL REFERENCES xreg.patient (id),
    study_date date,
    study_time text,
    accession_number text,
    study_description text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz
);
CREATE INDEX study_patient_ref_idx ON xreg.study (patient_ref);
CREATE INDEX study_date_idx ON xreg.study (study_date);
CREATE INDEX study_accession_number_idx ON xreg.study (accession_number);
COMMENT ON TABLE xreg.study IS 'One row per Study Instance UID';
COMMENT ON COLUMN xreg.study.study_instance_uid IS 'Study Instance UID (0020,000D)';
COMMENT ON COLUMN xreg.study.patient_ref IS 'xreg.patient.id of the study''s patient';
COMMENT ON COLUMN xreg.study.study_date IS 'Study Date (0008,0020); NULL if absent or invalid';
COMMENT ON COLUMN xreg.study.study_time IS 'Study Time (0008,0030) as sent, DICOM TM HHMMSS.FFFFFF';
COMMENT ON COLUMN xreg.study.accession_number IS 'Accession Number (0008,0050)';
COMMENT ON COLUMN xreg.study.study_description IS 'Study Description (0008,1030)';
COMMENT ON COLUMN xreg.study.updated_at IS 'when the row last changed; NULL if never';

CREATE TABLE xreg.series (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    series_instance_uid text NOT NULL UNIQUE CHECK (series_instance_uid <> ''),
    study_ref bigint NOT NULL REFERENCES xreg.study (id),
    modality text,
    series_number integer,
    series_description text,
    body_part_examined text,
    view_position text,
    laterality text,
    manufacturer text,
    institution_name text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz
);
CREATE INDEX series_study_ref_idx ON xreg.series (study_ref);
COMMENT ON TABLE xreg.series IS
    'One row per Series Instance UID. Series-level header fields keep the last non-empty value '
    'received for the series.';
COMMENT ON COLUMN xreg.series.series_instance_uid IS 'Series Instance UID (0020,000E)';
COMMENT ON COLUMN xreg.series.study_ref IS 'xreg.study.id of the series'' study';
COMMENT ON COLUMN xreg.series.modality IS 'Modality (0008,0060): CR, DX, ...';
COMMENT ON COLUMN xreg.series.series_number IS 'Series Number (0020,0011)';
COMMENT ON COLUMN xreg.series.series_description IS 'Series Description (0008,103E)';
COMMENT ON COLUMN xreg.series.body_part_examined IS
    'Body Part Examined (0018,0015) as sent in the header (often missing or wrong)';
COMMENT ON COLUMN xreg.series.view_position IS 'View Position (0018,5101): AP, PA, LL, ...';
COMMENT ON COLUMN xreg.series.laterality IS 'Laterality (0020,0060): R or L';
COMMENT ON COLUMN xreg.series.manufacturer IS 'Manufacturer (0008,0070)';
COMMENT ON COLUMN xreg.series.institution_name IS 'Institution Name (0008,0080)';
COMMENT ON COLUMN xreg.series.updated_at IS 'when the row last changed; NULL if never';

CREATE TABLE xreg.instance (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sop_instance_uid text NOT NULL UNIQUE CHECK (sop_instance_uid <> ''),
    series_ref bigint NOT NULL REFERENCES xreg.series (id),
    sop_class_uid text NOT NULL CHECK (sop_class_uid <> ''),
    transfer_syntax_uid text,
    instance_number integer,
    rows integer CHECK (rows > 0),
    columns integer CHECK (columns > 0),
    number_of_frames integer CHECK (number_of_frames > 0),
    bits_allocated integer CHECK (bits_allocated > 0),
    bits_stored integer CHECK (bits_stored > 0),
    samples_per_pixel integer CHECK (samples_per_pixel > 0),
    photometric_interpretation text,
    body_part_examined text,
    n_bytes bigint CHECK (n_bytes >= 0),
    received_at timestamptz NOT NULL DEFAULT now(),
    calling_ae text,
    called_ae text,
    peer_host text,
    spool_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz
);
CREATE INDEX instance_series_ref_idx ON xreg.instance (series_ref);
CREATE INDEX instance_received_at_idx ON xreg.instance (received_at);
COMMENT ON TABLE xreg.instance IS
    'One row per received SOP Instance UID. A re-sent object changes the row only if its header '
    'differs (audited); received_at, calling/called AE, peer and spool id stay those of the first '
    'reception.';
COMMENT ON COLUMN xreg.instance.sop_instance_uid IS 'SOP Instance UID (0008,0018)';
COMMENT ON COLUMN xreg.instance.series_ref IS 'xreg.series.id of the instance''s series';
COMMENT ON COLUMN xreg.instance.sop_class_uid IS 'SOP Class UID (0008,0016), e.g. 1.2.840.10008.5.1.4.1.1.1 (CR)';
COMMENT ON COLUMN xreg.instance.transfer_syntax_uid IS 'transfer syntax the object was received in';
COMMENT ON COLUMN xreg.instance.instance_number IS 'Instance Number (0020,0013)';
COMMENT ON COLUMN xreg.instance.rows IS 'Rows (0028,0010)';
COMMENT ON COLUMN xreg.instance.columns IS 'Columns (0028,0011)';
COMMENT ON COLUMN xreg.instance.number_of_frames IS 'Number of Frames (0028,0008); NULL for single-frame objects that omit it';
COMMENT ON COLUMN xreg.instance.bits_allocated IS 'Bits Allocated (0028,0100)';
COMMENT ON COLUMN xreg.instance.bits_stored IS 'Bits Stored (0028,0101)';
COMMENT ON COLUMN xreg.instance.samples_per_pixel IS 'Samples per Pixel (0028,0002)';
COMMENT ON COLUMN xreg.instance.photometric_interpretation IS
    'Photometric Interpretation (0028,0004): MONOCHROME1, MONOCHROME2, RGB, ...';
COMMENT ON COLUMN xreg.instance.body_part_examined IS
    'Body Part Examined (0018,0015) of this object''s header';
COMMENT ON COLUMN xreg.instance.n_bytes IS 'size of the received file in bytes';
COMMENT ON COLUMN xreg.instance.received_at IS 'when the C-STORE was acknowledged (first reception)';
COMMENT ON COLUMN xreg.instance.calling_ae IS 'AE title of the sender (first reception)';
COMMENT ON COLUMN xreg.instance.called_ae IS 'AE title the sender called (first reception)';
COMMENT ON COLUMN xreg.instance.peer_host IS 'network address of the sender (first reception)';
COMMENT ON COLUMN xreg.instance.spool_id IS 'xregd spool name of the first received file';
COMMENT ON COLUMN xreg.instance.updated_at IS 'when the row last changed; NULL if never';

CREATE TABLE xreg.rejection (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    spool_id text NOT NULL UNIQUE CHECK (spool_id <> ''),
    received_at timestamptz NOT NULL DEFAULT now(),
    calling_ae text,
    called_ae text,
    peer_host text,
    sop_class_uid text,
    sop_instance_uid text,
    dimse_status integer NOT NULL CHECK (dimse_status BETWEEN 0 AND 65535),
    dimse_status_hex text GENERATED ALWAYS AS (upper(lpad(to_hex(dimse_status), 4, '0'))) STORED,
    reason text NOT NULL,
    path text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejection_sop_instance_uid_idx ON xreg.rejection (sop_instance_uid);
CREATE INDEX rejection_received_at_idx ON xreg.rejection (received_at);
COMMENT ON TABLE xreg.rejection IS
    'Objects refused by the storage SCP or the pipeline, one row per spool file; the file is kept '
    'in the spool''s rejected area at path';
COMMENT ON COLUMN xreg.rejection.spool_id IS 'xregd spool name of the refused object';
COMMENT ON COLUMN xreg.rejection.sop_class_uid IS 'SOP Class UID, NULL when unknown';
COMMENT ON COLUMN xreg.rejection.sop_instance_uid IS 'SOP Instance UID, NULL when unknown';
COMMENT ON COLUMN xreg.rejection.dimse_status IS
    'DIMSE status sent to the peer (decimal); 0 when the object was refused after a Success';
COMMENT ON COLUMN xreg.rejection.dimse_status_hex IS 'dimse_status as DICOM writes it, e.g. A700, C000';
COMMENT ON COLUMN xreg.rejection.reason IS 'why the object was refused, one line';
COMMENT ON COLUMN xreg.rejection.path IS 'where xregd keeps the refused file';

CREATE TRIGGER patient_touch BEFORE UPDATE ON xreg.patient
    FOR EACH ROW EXECUTE FUNCTION xreg.touch_updated_at();
CREATE TRIGGER study_touch BEFORE UPDATE ON xreg.study
    FOR EACH ROW EXECUTE FUNCTION xreg.touch_updated_at();
CREATE TRIGGER series_touch BEFORE UPDATE ON xreg.series
    FOR EACH ROW EXECUTE FUNCTION xreg.touch_updated_at();
CREATE TRIGGER instance_touch BEFORE UPDATE ON xreg.instance
    FOR EACH ROW EXECUTE FUNCTION xreg.touch_updated_at();

CREATE TRIGGER patient_audit AFTER INSERT OR UPDATE OR DELETE ON xreg.patient
    FOR EACH ROW EXECUTE FUNCTION xreg.audit_row_change('patient_id', 'issuer_of_patient_id');
CREATE TRIGGER study_audit AFTER INSERT OR UPDATE OR DELETE ON xreg.study
    FOR EACH ROW EXECUTE FUNCTION xreg.audit_row_change('study_instance_uid');
CREATE TRIGGER series_audit AFTER INSERT OR UPDATE OR DELETE ON xreg.series
    FOR EACH ROW EXECUTE FUNCTION xreg.audit_row_change('series_instance_uid');
CREATE TRIGGER instance_audit AFTER INSERT OR UPDATE OR DELETE ON xreg.instance
    FOR EACH ROW EXECUTE FUNCTION xreg.audit_row_change('sop_instance_uid');
CREATE TRIGGER rejection_audit AFTER INSERT OR UPDATE OR DELETE ON xreg.rejection
    FOR EACH ROW EXECUTE FUNCTION xreg.audit_row_change('spool_id');

-- -----------------------------------------------------------------------------------------------
-- Views for people browsing the registry

CREATE VIEW xreg.instances AS
SELECT i.sop_instance_uid,
       se.series_instance_uid,
       st.study_instance_uid,
       p.patient_id,
       p.issuer_of_patient_id,
       p.patient_name,
       p.birth_date AS patient_birth_date,
       p.sex AS patient_sex,
       st.study_date,
       st.study_time,
       st.accession_number,
       st.study_description,
       se.modality,
       se.series_number,
       se.series_description,
       i.instance_number,
       i.sop_class_uid,
       i.transfer_syntax_uid,
       i.rows,
       i.columns,
       i.number_of_frames,
       i.bits_allocated,
       i.bits_stored,
       i.samples_per_pixel,
       i.photometric_interpretation,
       i.body_part_examined,
       se.body_part_examined AS series_body_part_examined,
       se.view_position,
       se.laterality,
       se.manufacturer,
       se.institution_name,
       i.n_bytes,
       i.received_at,
       i.calling_ae,
       i.called_ae,
       i.peer_host,
       i.spool_id,
       i.created_at,
       i.updated_at,
       i.id AS instance_ref,
       se.id AS series_ref,
       st.id AS study_ref,
       p.id AS patient_ref
FROM xreg.instance i
JOIN xreg.series se ON se.id = i.series_ref
JOIN xreg.study st ON st.id = se.study_ref
JOIN xreg.patient p ON p.id = st.patient_ref;
COMMENT ON VIEW xreg.instances IS
    'One row per received SOP instance with its series, study and patient: the table to browse '
    'and export from. body_part_examined is the instance header''s value, '
    'series_body_part_examined the series'' one.';

-- A LATERAL aggregate per study (rather than GROUP BY over the whole join) so that filters on
-- study or patient columns are applied before aggregating.
CREATE VIEW xreg.studies AS
SELECT st.study_instance_uid,
       p.patient_id,
       p.issuer_of_patient_id,
       p.patient_name,
       p.birth_date AS patient_birth_date,
       p.sex AS patient_sex,
       st.study_date,
       st.study_time,
       st.accession_number,
       st.study_description,
       agg.modalities,
       agg.body_parts,
       agg.n_series,
       agg.n_instances,
       agg.n_bytes,
       agg.first_received_at,
       agg.last_received_at,
       st.created_at,
       st.updated_at,
       st.id AS study_ref,
       p.id AS patient_ref
FROM xreg.study st
JOIN xreg.patient p ON p.id = st.patient_ref
CROSS JOIN LATERAL (
    SELECT string_agg(DISTINCT se.modality, ',' ORDER BY se.modality) AS modalities,
           string_agg(DISTINCT COALESCE(i.body_part_examined, se.body_part_examined), ','
                      ORDER BY COALESCE(i.body_part_examined, se.body_part_examined)) AS body_parts,
           count(DISTINCT se.id) AS n_series,
           count(i.id) AS n_instances,
           sum(i.n_bytes) AS n_bytes,
           min(i.received_at) AS first_received_at,
           max(i.received_at) AS last_received_at
    FROM xreg.series se
    LEFT JOIN xreg.instance i ON i.series_ref = se.id
    WHERE se.study_ref = st.id
) agg;
COMMENT ON VIEW xreg.studies IS
    'One row per study: patient, study header, the modalities and body parts (header values, '
    'comma-separated) of its instances, counts, total size, and first/last reception time.';
