-- 0002_registry.sql: what radiology admins browse. Models and their predictions, the study
-- summary, reviewers' labels, the body part vocabulary and settings; the hash-chained audit
-- trail; least-privilege roles; the views for people.
--
-- Applied by registry_migrate() in one transaction with its public.schema_migrations row (no
-- BEGIN/COMMIT here). Needs PostgreSQL 11+ for sha256(bytea) (no extension) and a migrating
-- role that owns schema xreg and may create roles (CREATEROLE), unless the three xreg_* roles
-- already exist (docs/registry.md, "Roles").

-- -----------------------------------------------------------------------------------------------
-- Roles. NOLOGIN group roles: the deployment grants them to login roles
-- (GRANT xreg_writer TO xregd). Roles are cluster-wide, so another database of the same cluster
-- may be creating them at this moment: a duplicate is not an error.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['xreg_writer', 'xreg_reader', 'xreg_reviewer'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

-- -----------------------------------------------------------------------------------------------
-- Who is acting. Inside a SECURITY DEFINER function current_user is the function's owner, so
-- the audit trigger and the label function ask for the session's role instead: the SET ROLE
-- target if any, else the login role.

CREATE FUNCTION xreg.invoking_role() RETURNS text
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN current_setting('role') = 'none' THEN session_user::text
                ELSE current_setting('role') END
$$;
COMMENT ON FUNCTION xreg.invoking_role() IS
    'the role the session acts as (SET ROLE target, else the login role), also inside '
    'SECURITY DEFINER functions';

-- -----------------------------------------------------------------------------------------------
-- Audit: more context per row, and the hash chain.
--
-- Every audit row gets seq (its position in the chain, 1, 2, 3, ... without gaps), prev_hash
-- (the hash of row seq-1; 32 zero bytes for seq 1) and hash = sha256(prev_hash || canonical),
-- where canonical is the UTF-8 text built by xreg.audit_canonical (docs/registry.md gives the
-- exact form; xregctl audit verify rebuilds it in C). A BEFORE INSERT trigger on audit_log
-- assigns them while holding the row lock of xreg.audit_chain_head until the transaction ends,
-- so that concurrent writers chain one after another and a rolled-back transaction leaves no
-- hole. The rows 0001 wrote before this migration are chained here, in id order.

ALTER TABLE xreg.audit_log
    ADD COLUMN login_role text,
    ADD COLUMN application_name text,
    ADD COLUMN client_addr text,
    ADD COLUMN seq bigint,
    ADD COLUMN prev_hash bytea,
    ADD COLUMN hash bytea;
COMMENT ON COLUMN xreg.audit_log.db_role IS
    'role that made the change (the SET ROLE target if any, else the login role)';
COMMENT ON COLUMN xreg.audit_log.login_role IS 'the session''s login role (session_user)';
COMMENT ON COLUMN xreg.audit_log.application_name IS
    'the client''s application_name, e.g. "xregd worker 1", "psql"';
COMMENT ON COLUMN xreg.audit_log.client_addr IS
    'the client''s network address; NULL over a Unix socket';
COMMENT ON COLUMN xreg.audit_log.seq IS
    'position in the hash chain: 1, 2, 3, ... in the order the rows were chained';
COMMENT ON COLUMN xreg.audit_log.prev_hash IS 'hash of the row with seq - 1 (32 zero bytes for seq 1)';
COMMENT ON COLUMN xreg.audit_log.hash IS
    'sha256(prev_hash || convert_to(xreg.audit_canonical(row), ''UTF8''))';

CREATE TABLE xreg.audit_chain_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq bigint NOT NULL,
    hash bytea NOT NULL CHECK (length(hash) = 32),
    last_id bigint
);
COMMENT ON TABLE xreg.audit_chain_head IS
    'The end of the audit hash chain (one row): seq and hash of the last chained audit row. '
    'Its row lock serializes the writers of audit rows.';

-- One field of the canonical form: newline, then "-" for NULL or <byte length>:<text>.
CREATE FUNCTION xreg.audit_field(v text) RETURNS text
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT E'\n' || CASE WHEN v IS NULL THEN '-' ELSE octet_length(v)::text || ':' || v END
$$;

CREATE FUNCTION xreg.audit_canonical(r xreg.audit_log) RETURNS text
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'xreg-audit-v1'
        || xreg.audit_field(r.seq::text)
        || xreg.audit_field(r.id::text)
        || xreg.audit_field(to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
        || xreg.audit_field(r.txid::text)
        || xreg.audit_field(r.db_role)
        || xreg.audit_field(r.login_role)
        || xreg.audit_field(r.actor)
        || xreg.audit_field(r.application_name)
        || xreg.audit_field(r.client_addr)
        || xreg.audit_field(r.action)
        || xreg.audit_field(r.table_name)
        || xreg.audit_field(r.row_key)
        || xreg.audit_field(r.old_row::text)
        || xreg.audit_field(r.new_row::text)
$$;
COMMENT ON FUNCTION xreg.audit_canonical(xreg.audit_log) IS
    'the text an audit row''s hash covers (format xreg-audit-v1, see docs/registry.md)';

CREATE FUNCTION xreg.audit_chain() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    head record;
BEGIN
    SELECT seq, hash INTO STRICT head FROM xreg.audit_chain_head WHERE singleton FOR UPDATE;
    -- Taken after the lock, so that time follows the chain.
    NEW.at := clock_timestamp();
    NEW.seq := head.seq + 1;
    NEW.prev_hash := head.hash;
    NEW.hash := sha256(head.hash || convert_to(xreg.audit_canonical(NEW), 'UTF8'));
    UPDATE xreg.audit_chain_head SET seq = NEW.seq, hash = NEW.hash, last_id = NEW.id
        WHERE singleton;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION xreg.audit_chain() IS
    'BEFORE INSERT trigger on xreg.audit_log: appends the row to the hash chain';

-- Chain the rows written before this migration, in id order. The append-only trigger is set
-- aside for this one transaction (only the table owner can; the migration runs as the owner).
ALTER TABLE xreg.audit_log DISABLE TRIGGER audit_log_append_only;
DO $$
DECLARE
    r xreg.audit_log;
    prev bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
    n bigint := 0;
    last bigint;
BEGIN
    FOR r IN SELECT * FROM xreg.audit_log ORDER BY id LOOP
        n := n + 1;
        r.seq := n;
        r.prev_hash := prev;
        r.hash := sha256(prev || convert_to(xreg.audit_canonical(r), 'UTF8'));
        UPDATE xreg.audit_log SET seq = r.seq, prev_hash = r.prev_hash, hash = r.hash
            WHERE id = r.id;
        prev := r.hash;
        last := r.id;
    END LOOP;
    INSERT INTO xreg.audit_chain_head (seq, hash, last_id) VALUES (n, prev, last);
END
$$;
ALTER TABLE xreg.audit_log ENABLE TRIGGER audit_log_append_only;

ALTER TABLE xreg.audit_log
    ALTER COLUMN seq SET NOT NULL,
    ALTER COLUMN prev_hash SET NOT NULL,
    ALTER COLUMN hash SET NOT NULL;
CREATE UNIQUE INDEX audit_log_seq_idx ON xreg.audit_log (seq);

CREATE TRIGGER audit_log_chain BEFORE INSERT ON xreg.audit_log
    FOR EACH ROW EXECUTE FUNCTION xreg.audit_chain();

-- The row trigger now runs as the schema owner (SECURITY DEFINER), so that the roles changing
-- registry rows need no privilege at all on audit_log; it names the invoking role itself.
-- Actor: the xreg.actor setting of the transaction (set by xregd and xregctl), else NULL.
CREATE OR REPLACE FUNCTION xreg.audit_row_change() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
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
    INSERT INTO xreg.audit_log (db_role, login_role, actor, application_name, client_addr,
                                action, table_name, row_key, old_row, new_row)
        VALUES (xreg.invoking_role(), session_user,
                NULLIF(current_setting('xreg.actor', true), ''),
                NULLIF(current_setting('application_name'), ''),
                host(inet_client_addr()),
                TG_OP, TG_TABLE_NAME, k, old_j, new_j);
    RETURN NULL;
END
$$;

-- Called first in every xregd/xregctl write transaction: taking the chain head's lock before
-- any row lock gives all writers one lock order (no deadlock between a writer holding the
-- chain and one holding a row it needs), and makes each statement's snapshot see every write
-- transaction chained before it (the study summary depends on that).
CREATE FUNCTION xreg.audit_serialize() RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM xreg.audit_chain_head WHERE singleton FOR UPDATE;
END
$$;
COMMENT ON FUNCTION xreg.audit_serialize() IS
    'locks the audit chain head until the end of the transaction (one writer at a time)';

-- -----------------------------------------------------------------------------------------------
-- Settings and the body part vocabulary

CREATE TABLE xreg.settings (
    key text PRIMARY KEY,
    value text NOT NULL,
    description text
);
COMMENT ON TABLE xreg.settings IS 'Registry settings that views read; change them with UPDATE (audited)';
INSERT INTO xreg.settings (key, value, description) VALUES
    ('review.confidence_threshold', '0.8',
     'predictions whose confidence is below this value (0 to 1) enter xreg.review_queue');

CREATE TABLE xreg.body_part_map (
    label text PRIMARY KEY CHECK (label = lower(label) AND label <> ''),
    dicom_term text NOT NULL CHECK (dicom_term ~ '^[A-Z0-9 _]{1,16}$'),
    header_terms text[] NOT NULL,
    description text
);
COMMENT ON TABLE xreg.body_part_map IS
    'Model body part labels (lower case) -> DICOM Body Part Examined defined term (PS3.16 '
    'Annex L). header_terms lists the header values that agree with the label (for '
    'xreg.body_part_mismatch).';
INSERT INTO xreg.body_part_map (label, dicom_term, header_terms, description) VALUES
    ('chest', 'CHEST', '{CHEST,THORAX,LUNG,RIBS}', 'thesis class, demo data'),
    ('spine', 'SPINE', '{SPINE,CSPINE,TSPINE,LSPINE,SSPINE,TLSPINE,COCCYX,SACRUM}',
     'thesis class, demo data (scoliosis AP spine)'),
    ('knee', 'KNEE', '{KNEE,LEG,LOWER LIMB}', 'thesis class, demo data'),
    ('skull', 'SKULL', '{SKULL,HEAD,FACE,JAW}', 'thesis class, demo data (cephalograms)'),
    ('finger', 'FINGER', '{FINGER,HAND,THUMB}', 'demo data'),
    ('shoulder', 'SHOULDER', '{SHOULDER,CLAVICLE,SCAPULA}', 'thesis class, demo data'),
    ('humerus', 'HUMERUS', '{HUMERUS,ARM,UPPER LIMB,EXTREMITY}', 'demo data'),
    ('elbow', 'ELBOW', '{ELBOW,ARM,UPPER LIMB,EXTREMITY}', 'demo data'),
    ('forearm', 'FOREARM', '{FOREARM,ARM,UPPER LIMB,EXTREMITY}', 'demo data'),
    ('wrist', 'WRIST', '{WRIST,HAND,UPPER LIMB,EXTREMITY}', 'demo data'),
    ('hand', 'HAND', '{HAND,FINGER,WRIST,UPPER LIMB,EXTREMITY}', 'thesis class, demo data'),
    ('pelvis_hip', 'PELVIS', '{PELVIS,HIP,SACRUM,ABDOMEN}', 'thesis class, demo data'),
    ('pelvis', 'PELVIS', '{PELVIS,HIP,SACRUM}', NULL),
    ('hip', 'HIP', '{HIP,PELVIS}', NULL),
    ('abdomen', 'ABDOMEN', '{ABDOMEN,PELVIS}', 'thesis class'),
    ('foot', 'FOOT', '{FOOT,ANKLE,LEG,LOWER LIMB,EXTREMITY}', 'thesis class'),
    ('ankle', 'ANKLE', '{ANKLE,FOOT,LEG,LOWER LIMB,EXTREMITY}', NULL),
    ('leg', 'LEG', '{LEG,LOWER LIMB,EXTREMITY}', NULL),
    ('head', 'HEAD', '{HEAD,SKULL,FACE}', NULL);

-- -----------------------------------------------------------------------------------------------
-- Models, predictions, study summaries, human labels

CREATE TABLE xreg.model (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL CHECK (name <> ''),
    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    task text NOT NULL CHECK (task IN ('body_part', 'implant', 'fracture')),
    labels text[] NOT NULL CHECK (cardinality(labels) >= 2),
    positive_label text,
    version text,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT model_key UNIQUE (name, sha256),
    CONSTRAINT model_positive_label CHECK (
        (task = 'body_part' AND positive_label IS NULL)
        OR (task <> 'body_part' AND positive_label = ANY (labels)))
);
COMMENT ON TABLE xreg.model IS
    'Model versions that produced predictions: one row per (name, sha256 of the ONNX file)';
COMMENT ON COLUMN xreg.model.task IS 'xreg.task metadata: body_part, implant or fracture';
COMMENT ON COLUMN xreg.model.labels IS 'class labels in output order (xreg.labels metadata)';
COMMENT ON COLUMN xreg.model.positive_label IS
    'for implant/fracture: the label that means present (fracture, instrument)';
COMMENT ON COLUMN xreg.model.metadata IS 'the model''s metadata_props as a JSON object';

CREATE TABLE xreg.prediction (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_ref bigint NOT NULL REFERENCES xreg.instance (id),
    model_ref bigint NOT NULL REFERENCES xreg.model (id),
    task text NOT NULL,
    label text NOT NULL,
    body_part text,
    probabilities jsonb NOT NULL,
    confidence real NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    preprocessing text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz,
    CONSTRAINT prediction_key UNIQUE (instance_ref, model_ref)
);
CREATE INDEX prediction_model_ref_idx ON xreg.prediction (model_ref);
CREATE INDEX prediction_created_at_idx ON xreg.prediction (created_at);
COMMENT ON TABLE xreg.prediction IS
    'One row per instance and model version: the predicted label, every class probability and '
    'the confidence (the highest probability). Idempotent: the same result again changes nothing.';
COMMENT ON COLUMN xreg.prediction.label IS 'the label with the highest probability';
COMMENT ON COLUMN xreg.prediction.body_part IS
    'for task body_part: label mapped to a DICOM Body Part Examined term (xreg.body_part_map)';
COMMENT ON COLUMN xreg.prediction.probabilities IS 'JSON object label -> probability';
COMMENT ON COLUMN xreg.prediction.preprocessing IS
    'fingerprint of the preprocessing applied (input size, mean/std, resize, VOI source)';

CREATE TABLE xreg.human_label (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_ref bigint REFERENCES xreg.instance (id),
    study_ref bigint REFERENCES xreg.study (id),
    task text NOT NULL CHECK (task IN ('body_part', 'implant', 'fracture')),
    value text NOT NULL CHECK (value <> ''),
    body_part text,
    reason text NOT NULL CHECK (reason <> ''),
    reviewer text NOT NULL,
    actor text,
    replaced_value text,
    replaced_source text CHECK (replaced_source IN ('human', 'prediction')),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT human_label_target CHECK ((instance_ref IS NULL) <> (study_ref IS NULL))
);
CREATE INDEX human_label_instance_idx ON xreg.human_label (instance_ref, task);
CREATE INDEX human_label_study_idx ON xreg.human_label (study_ref, task);
COMMENT ON TABLE xreg.human_label IS
    'Reviewers'' verified labels for an instance or a whole study, newest wins; older ones stay '
    'as history. Written only through xreg.record_label().';
COMMENT ON COLUMN xreg.human_label.value IS
    'body_part: a xreg.body_part_map label; implant/fracture: present or absent';
COMMENT ON COLUMN xreg.human_label.reviewer IS 'the database role of the reviewer';
COMMENT ON COLUMN xreg.human_label.replaced_value IS
    'the value this label replaced: the previous label''s, else the prediction''s';

CREATE TABLE xreg.study_summary (
    study_ref bigint PRIMARY KEY REFERENCES xreg.study (id),
    body_parts jsonb NOT NULL DEFAULT '[]',
    body_part_terms text[] NOT NULL DEFAULT '{}',
    any_instrument boolean,
    instrument_confidence real,
    instrument_instance_ref bigint REFERENCES xreg.instance (id),
    instrument_source text,
    any_fracture boolean,
    fracture_confidence real,
    fracture_instance_ref bigint REFERENCES xreg.instance (id),
    fracture_source text,
    n_instances_predicted integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz
);
COMMENT ON TABLE xreg.study_summary IS
    'Per study, from each instance''s current finding (its newest human label, else its newest '
    'prediction) and any study-level label: the body parts present, whether any instrument '
    '(implant) or fracture is present, each with its confidence and the instance it came from. '
    'Recomputed by xreg.study_summary_refresh() in the transaction that changes a prediction or '
    'a label.';
COMMENT ON COLUMN xreg.study_summary.body_parts IS
    'JSON array of {body_part, label, confidence, sop_instance_uid, source}, one per body part, '
    'from its most confident instance';
COMMENT ON COLUMN xreg.study_summary.any_instrument IS
    'NULL: no implant prediction yet; true if any instance shows one';
COMMENT ON COLUMN xreg.study_summary.instrument_confidence IS
    'present: the highest confidence among positive instances; absent: the lowest confidence '
    'among the negative ones (the closest call); 1 for a human label';

CREATE TRIGGER prediction_touch BEFORE UPDATE ON xreg.prediction
    FOR EACH ROW EXECUTE FUNCTION xreg.touch_updated_at();
CREATE TRIGGER study_summary_touch BEFORE UPDATE ON xreg.study_summary
    FOR EACH ROW EXECUTE FUNCTION xreg.touch_updated_at();

CREATE TRIGGER model_audit AFTER INSERT OR UPDATE OR DELETE ON xreg.model
    FOR EACH ROW EXECUTE FUNCTION xreg.audit_row_change('name', 'sha256');
CREATE TRIGGER prediction_audit AFTER INSERT OR UPDATE OR DELETE ON xreg.prediction
    FOR EACH ROW EXECUTE FUNCTION xreg.audit_row_change('instance_ref', 'model_ref');
CREATE TRIGGER human_label_audit AFTER INSERT OR UPDATE OR DELETE ON xreg.human_label
    FOR EACH ROW EXECUTE FUNCTION xreg.audit_row_change('id');
CREATE TRIGGER study_summary_audit AFTER INSERT OR UPDATE OR DELETE ON xreg.study_summary
    FOR EACH ROW EXECUTE FUNCTION xreg.audit_row_change('study_ref');
CREATE TRIGGER settings_audit AFTER INSERT OR UPDATE OR DELETE ON xreg.settings
    FOR EACH ROW EXECUTE FUNCTION xreg.audit_row_change('key');
CREATE TRIGGER body_part_map_audit AFTER INSERT OR UPDATE OR DELETE ON xreg.body_part_map
    FOR EACH ROW EXECUTE FUNCTION xreg.audit_row_change('label');

-- -----------------------------------------------------------------------------------------------
-- Current findings: per instance and task, the newest prediction and the newest human label.

CREATE VIEW xreg.current_prediction AS
SELECT DISTINCT ON (p.instance_ref, p.task)
       p.*, m.name AS model_name, m.sha256 AS model_sha256, m.version AS model_version,
       CASE WHEN p.task = 'body_part' THEN NULL ELSE p.label = m.positive_label END AS positive
FROM xreg.prediction p
JOIN xreg.model m ON m.id = p.model_ref
ORDER BY p.instance_ref, p.task, COALESCE(p.updated_at, p.created_at) DESC, p.id DESC;

CREATE VIEW xreg.current_label AS
SELECT DISTINCT ON (COALESCE(instance_ref, 0), COALESCE(study_ref, 0), task) *
FROM xreg.human_label
ORDER BY COALESCE(instance_ref, 0), COALESCE(study_ref, 0), task, created_at DESC, id DESC;

CREATE FUNCTION xreg.study_summary_refresh(p_study_ref bigint) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s xreg.study_summary;
BEGIN
    WITH inst AS (
        SELECT i.id, i.sop_instance_uid
        FROM xreg.instance i JOIN xreg.series se ON se.id = i.series_ref
        WHERE se.study_ref = p_study_ref
    ), finding AS (
        -- One row per instance and task: the human label wins over the prediction.
        SELECT inst.id AS instance_ref, inst.sop_instance_uid, t.task,
               COALESCE(l.value, p.label) AS label,
               COALESCE(l.body_part, p.body_part) AS body_part,
               CASE WHEN l.id IS NOT NULL THEN 1.0::real ELSE p.confidence END AS confidence,
               CASE WHEN l.id IS NOT NULL THEN l.value = 'present' ELSE p.positive END AS positive,
               CASE WHEN l.id IS NOT NULL THEN 'human' ELSE 'prediction' END AS source
        FROM inst
        CROSS JOIN (VALUES ('body_part'), ('implant'), ('fracture')) t(task)
        LEFT JOIN xreg.current_prediction p ON p.instance_ref = inst.id AND p.task = t.task
        LEFT JOIN xreg.current_label l ON l.instance_ref = inst.id AND l.task = t.task
        WHERE p.id IS NOT NULL OR l.id IS NOT NULL
    ), study_label AS (
        SELECT * FROM xreg.current_label WHERE study_ref = p_study_ref
    ), parts AS (
        SELECT DISTINCT ON (COALESCE(f.body_part, f.label)) f.*
        FROM finding f WHERE f.task = 'body_part'
        ORDER BY COALESCE(f.body_part, f.label), f.confidence DESC, f.instance_ref
    ), binary_finding AS (
        -- Per task: the most confident positive instance, else the least confident negative.
        SELECT DISTINCT ON (f.task) f.*
        FROM finding f WHERE f.task IN ('implant', 'fracture') AND f.positive IS NOT NULL
        ORDER BY f.task, f.positive DESC,
                 CASE WHEN f.positive THEN -f.confidence ELSE f.confidence END, f.instance_ref
    )
    SELECT p_study_ref,
           COALESCE(
               (SELECT jsonb_build_array(jsonb_build_object(
                        'body_part', sl.body_part, 'label', sl.value, 'confidence', 1,
                        'sop_instance_uid', NULL, 'source', 'human'))
                FROM study_label sl WHERE sl.task = 'body_part'),
               (SELECT jsonb_agg(jsonb_build_object(
                        'body_part', pa.body_part, 'label', pa.label,
                        'confidence', pa.confidence, 'sop_instance_uid', pa.sop_instance_uid,
                        'source', pa.source) ORDER BY COALESCE(pa.body_part, pa.label))
                FROM parts pa),
               '[]'::jsonb),
           COALESCE(
               (SELECT ARRAY[sl.body_part] FROM study_label sl
                WHERE sl.task = 'body_part' AND sl.body_part IS NOT NULL),
               (SELECT array_agg(DISTINCT pa.body_part ORDER BY pa.body_part) FROM parts pa
                WHERE pa.body_part IS NOT NULL),
               '{}'::text[]),
           COALESCE((SELECT sl.value = 'present' FROM study_label sl WHERE sl.task = 'implant'),
                    (SELECT b.positive FROM binary_finding b WHERE b.task = 'implant')),
           COALESCE((SELECT 1.0::real FROM study_label sl WHERE sl.task = 'implant'),
                    (SELECT b.confidence FROM binary_finding b WHERE b.task = 'implant')),
           CASE WHEN EXISTS (SELECT FROM study_label sl WHERE sl.task = 'implant') THEN NULL
                ELSE (SELECT b.instance_ref FROM binary_finding b WHERE b.task = 'implant') END,
           COALESCE((SELECT 'human' FROM study_label sl WHERE sl.task = 'implant'),
                    (SELECT b.source FROM binary_finding b WHERE b.task = 'implant')),
           COALESCE((SELECT sl.value = 'present' FROM study_label sl WHERE sl.task = 'fracture'),
                    (SELECT b.positive FROM binary_finding b WHERE b.task = 'fracture')),
           COALESCE((SELECT 1.0::real FROM study_label sl WHERE sl.task = 'fracture'),
                    (SELECT b.confidence FROM binary_finding b WHERE b.task = 'fracture')),
           CASE WHEN EXISTS (SELECT FROM study_label sl WHERE sl.task = 'fracture') THEN NULL
                ELSE (SELECT b.instance_ref FROM binary_finding b WHERE b.task = 'fracture') END,
           COALESCE((SELECT 'human' FROM study_label sl WHERE sl.task = 'fracture'),
                    (SELECT b.source FROM binary_finding b WHERE b.task = 'fracture')),
           (SELECT count(DISTINCT f.instance_ref) FROM finding f)::integer
    INTO s.study_ref, s.body_parts, s.body_part_terms, s.any_instrument,
         s.instrument_confidence, s.instrument_instance_ref, s.instrument_source,
         s.any_fracture, s.fracture_confidence, s.fracture_instance_ref, s.fracture_source,
         s.n_instances_predicted;

    INSERT INTO xreg.study_summary AS t
        (study_ref, body_parts, body_part_terms, any_instrument, instrument_confidence,
         instrument_instance_ref, instrument_source, any_fracture, fracture_confidence,
         fracture_instance_ref, fracture_source, n_instances_predicted)
    VALUES (s.study_ref, s.body_parts, s.body_part_terms, s.any_instrument,
            s.instrument_confidence, s.instrument_instance_ref, s.instrument_source,
            s.any_fracture, s.fracture_confidence, s.fracture_instance_ref, s.fracture_source,
            s.n_instances_predicted)
    ON CONFLICT (study_ref) DO UPDATE SET
        body_parts = EXCLUDED.body_parts,
        body_part_terms = EXCLUDED.body_part_terms,
        any_instrument = EXCLUDED.any_instrument,
        instrument_confidence = EXCLUDED.instrument_confidence,
        instrument_instance_ref = EXCLUDED.instrument_instance_ref,
        instrument_source = EXCLUDED.instrument_source,
        any_fracture = EXCLUDED.any_fracture,
        fracture_confidence = EXCLUDED.fracture_confidence,
        fracture_instance_ref = EXCLUDED.fracture_instance_ref,
        fracture_source = EXCLUDED.fracture_source,
        n_instances_predicted = EXCLUDED.n_instances_predicted
    WHERE (t.body_parts, t.body_part_terms, t.any_instrument, t.instrument_confidence,
           t.instrument_instance_ref, t.instrument_source, t.any_fracture, t.fracture_confidence,
           t.fracture_instance_ref, t.fracture_source, t.n_instances_predicted)
        IS DISTINCT FROM
          (EXCLUDED.body_parts, EXCLUDED.body_part_terms, EXCLUDED.any_instrument,
           EXCLUDED.instrument_confidence, EXCLUDED.instrument_instance_ref,
           EXCLUDED.instrument_source, EXCLUDED.any_fracture, EXCLUDED.fracture_confidence,
           EXCLUDED.fracture_instance_ref, EXCLUDED.fracture_source,
           EXCLUDED.n_instances_predicted);
END
$$;
COMMENT ON FUNCTION xreg.study_summary_refresh(bigint) IS
    'recomputes one study''s xreg.study_summary row (a no-op when nothing changed)';

-- Upsert one prediction (idempotent per instance and model); returns the instance's study id,
-- for xreg.study_summary_refresh. Errors: 23503 unknown instance or model, 22023 probabilities
-- that do not match the model's labels.
CREATE FUNCTION xreg.record_prediction(p_sop_instance_uid text, p_model_ref bigint,
                                       p_probabilities real[], p_preprocessing text)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m xreg.model;
    inst_id bigint;
    study_id bigint;
    best integer;
    conf real;
    lbl text;
    probs jsonb;
BEGIN
    SELECT * INTO m FROM xreg.model WHERE id = p_model_ref;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model % is not registered', p_model_ref
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF cardinality(p_probabilities) IS DISTINCT FROM cardinality(m.labels) THEN
        RAISE EXCEPTION 'model "%" has % labels but % probabilities were given', m.name,
            cardinality(m.labels), COALESCE(cardinality(p_probabilities), 0)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM unnest(p_probabilities) p WHERE p IS NULL OR p = 'NaN'::real
               OR p < 0 OR p > 1) THEN
        RAISE EXCEPTION 'probabilities must be in [0, 1], got %', p_probabilities
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT i.id, se.study_ref INTO inst_id, study_id
    FROM xreg.instance i JOIN xreg.series se ON se.id = i.series_ref
    WHERE i.sop_instance_uid = p_sop_instance_uid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'instance "%" is not registered', p_sop_instance_uid
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT o, p INTO best, conf FROM unnest(p_probabilities) WITH ORDINALITY u(p, o)
    ORDER BY p DESC, o LIMIT 1;
    lbl := m.labels[best];
    SELECT jsonb_object_agg(l, p) INTO probs FROM unnest(m.labels, p_probabilities) u(l, p);
    INSERT INTO xreg.prediction AS t
        (instance_ref, model_ref, task, label, body_part, probabilities, confidence,
         preprocessing)
    VALUES (inst_id, m.id, m.task, lbl,
            CASE WHEN m.task = 'body_part' THEN
                (SELECT b.dicom_term FROM xreg.body_part_map b WHERE b.label = lower(lbl))
            END,
            probs, conf, NULLIF(p_preprocessing, ''))
    ON CONFLICT (instance_ref, model_ref) DO UPDATE SET
        label = EXCLUDED.label,
        body_part = EXCLUDED.body_part,
        probabilities = EXCLUDED.probabilities,
        confidence = EXCLUDED.confidence,
        preprocessing = EXCLUDED.preprocessing
    WHERE (t.label, t.body_part, t.probabilities, t.confidence, t.preprocessing)
        IS DISTINCT FROM
          (EXCLUDED.label, EXCLUDED.body_part, EXCLUDED.probabilities, EXCLUDED.confidence,
           EXCLUDED.preprocessing);
    RETURN study_id;
END
$$;
COMMENT ON FUNCTION xreg.record_prediction(text, bigint, real[], text) IS
    'upserts the prediction of one model for one instance; returns the study id';

-- A reviewer's correction. Runs as the schema owner (reviewers have no table privileges);
-- search_path is pinned so that a reviewer's own objects cannot stand in for ours.
CREATE FUNCTION xreg.record_label(p_sop_instance_uid text, p_study_instance_uid text,
                                  p_task text, p_value text, p_reason text)
    RETURNS TABLE (label_id bigint, replaced_value text, replaced_source text)
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_instance bigint;
    v_study bigint;
    v_value text := lower(btrim(p_value));
    v_body_part text;
    v_prev text;
    v_prev_source text;
    v_id bigint;
BEGIN
    IF (NULLIF(p_sop_instance_uid, '') IS NULL) = (NULLIF(p_study_instance_uid, '') IS NULL) THEN
        RAISE EXCEPTION 'give either a SOP Instance UID or a Study Instance UID'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_task IS NULL OR p_task NOT IN ('body_part', 'implant', 'fracture') THEN
        RAISE EXCEPTION 'unrecognized task "%"', p_task
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'tasks are body_part, implant and fracture';
    END IF;
    IF COALESCE(btrim(p_reason), '') = '' THEN
        RAISE EXCEPTION 'a label needs a reason' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_task = 'body_part' THEN
        SELECT b.label, b.dicom_term INTO v_value, v_body_part FROM xreg.body_part_map b
        WHERE b.label = v_value OR b.dicom_term = upper(v_value)
        ORDER BY b.label = v_value DESC, b.label LIMIT 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'unrecognized body part "%"', p_value
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'see xreg.body_part_map for the labels and DICOM terms';
        END IF;
    ELSE
        v_value := CASE WHEN v_value IN ('present', 'yes', 'true', '1') THEN 'present'
                        WHEN v_value IN ('absent', 'no', 'false', '0') THEN 'absent' END;
        IF v_value IS NULL THEN
            RAISE EXCEPTION 'unrecognized % value "%"', p_task, p_value
                USING ERRCODE = 'invalid_parameter_value', HINT = 'use present or absent';
        END IF;
    END IF;

    IF NULLIF(p_sop_instance_uid, '') IS NOT NULL THEN
        SELECT i.id, se.study_ref INTO v_instance, v_study
        FROM xreg.instance i JOIN xreg.series se ON se.id = i.series_ref
        WHERE i.sop_instance_uid = p_sop_instance_uid;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'instance "%" is not registered', p_sop_instance_uid
                USING ERRCODE = 'no_data_found';
        END IF;
        SELECT l.value, 'human' INTO v_prev, v_prev_source FROM xreg.current_label l
        WHERE l.instance_ref = v_instance AND l.task = p_task;
        IF NOT FOUND THEN
            SELECT CASE WHEN p.task = 'body_part' THEN p.label
                        WHEN p.positive THEN 'present' ELSE 'absent' END, 'prediction'
            INTO v_prev, v_prev_source
            FROM xreg.current_prediction p WHERE p.instance_ref = v_instance AND p.task = p_task;
        END IF;
    ELSE
        SELECT st.id INTO v_study FROM xreg.study st
        WHERE st.study_instance_uid = p_study_instance_uid;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'study "%" is not registered', p_study_instance_uid
                USING ERRCODE = 'no_data_found';
        END IF;
        SELECT l.value, 'human' INTO v_prev, v_prev_source FROM xreg.current_label l
        WHERE l.study_ref = v_study AND l.task = p_task;
        IF NOT FOUND THEN
            SELECT CASE p_task
                       WHEN 'body_part' THEN array_to_string(s.body_part_terms, ',')
                       WHEN 'implant' THEN CASE s.any_instrument WHEN true THEN 'present'
                                                                 WHEN false THEN 'absent' END
                       ELSE CASE s.any_fracture WHEN true THEN 'present'
                                                WHEN false THEN 'absent' END
                   END, 'prediction'
            INTO v_prev, v_prev_source
            FROM xreg.study_summary s WHERE s.study_ref = v_study;
            IF v_prev IS NULL OR v_prev = '' THEN
                v_prev := NULL;
                v_prev_source := NULL;
            END IF;
        END IF;
    END IF;

    INSERT INTO xreg.human_label (instance_ref, study_ref, task, value, body_part, reason,
                                  reviewer, actor, replaced_value, replaced_source)
    VALUES (v_instance, CASE WHEN v_instance IS NULL THEN v_study END, p_task, v_value,
            v_body_part, btrim(p_reason), xreg.invoking_role(),
            NULLIF(current_setting('xreg.actor', true), ''), v_prev, v_prev_source)
    RETURNING id INTO v_id;
    PERFORM xreg.study_summary_refresh(v_study);
    RETURN QUERY SELECT v_id, v_prev, v_prev_source;
END
$$;
COMMENT ON FUNCTION xreg.record_label(text, text, text, text, text) IS
    'records a reviewer''s verified label for an instance (first argument) or a study (second); '
    'returns the new label''s id and the value it replaced';

-- -----------------------------------------------------------------------------------------------
-- Views for people

CREATE OR REPLACE VIEW xreg.instances AS
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
       p.id AS patient_ref,
       -- 0002: the predicted and verified findings beside the header
       bp.body_part AS predicted_body_part,
       bp.label AS predicted_body_part_label,
       bp.confidence AS body_part_confidence,
       bp.model_name AS body_part_model,
       im.positive AS predicted_instrument,
       im.confidence AS instrument_confidence,
       fr.positive AS predicted_fracture,
       fr.confidence AS fracture_confidence,
       lbp.body_part AS verified_body_part,
       CASE lim.value WHEN 'present' THEN true WHEN 'absent' THEN false END AS verified_instrument,
       CASE lfr.value WHEN 'present' THEN true WHEN 'absent' THEN false END AS verified_fracture
FROM xreg.instance i
JOIN xreg.series se ON se.id = i.series_ref
JOIN xreg.study st ON st.id = se.study_ref
JOIN xreg.patient p ON p.id = st.patient_ref
LEFT JOIN xreg.current_prediction bp ON bp.instance_ref = i.id AND bp.task = 'body_part'
LEFT JOIN xreg.current_prediction im ON im.instance_ref = i.id AND im.task = 'implant'
LEFT JOIN xreg.current_prediction fr ON fr.instance_ref = i.id AND fr.task = 'fracture'
LEFT JOIN xreg.current_label lbp ON lbp.instance_ref = i.id AND lbp.task = 'body_part'
LEFT JOIN xreg.current_label lim ON lim.instance_ref = i.id AND lim.task = 'implant'
LEFT JOIN xreg.current_label lfr ON lfr.instance_ref = i.id AND lfr.task = 'fracture';
COMMENT ON VIEW xreg.instances IS
    'One row per received SOP instance with its series, study and patient, and beside the '
    'header''s body_part_examined the predicted body part (DICOM term), instrument and fracture '
    'with their confidence, and any reviewer-verified values.';

CREATE OR REPLACE VIEW xreg.studies AS
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
       p.id AS patient_ref,
       -- 0002: the study summary
       array_to_string(ss.body_part_terms, ',') AS predicted_body_parts,
       ss.any_instrument,
       ss.instrument_confidence,
       ss.any_fracture,
       ss.fracture_confidence,
       COALESCE(ss.n_instances_predicted, 0) AS n_instances_predicted,
       ss.body_parts AS body_part_findings
FROM xreg.study st
JOIN xreg.patient p ON p.id = st.patient_ref
LEFT JOIN xreg.study_summary ss ON ss.study_ref = st.id
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
    'One row per study: patient, study header, the header body parts (body_parts), and from '
    'xreg.study_summary the predicted body parts (DICOM terms), any instrument, any fracture, '
    'with their confidence.';

CREATE VIEW xreg.predictions AS
SELECT i.sop_instance_uid, se.series_instance_uid, st.study_instance_uid, pa.patient_id,
       p.task, p.label, p.body_part, p.confidence, p.probabilities,
       m.name AS model_name, m.sha256 AS model_sha256, m.version AS model_version,
       p.preprocessing, p.created_at, p.updated_at,
       COALESCE(i.body_part_examined, se.body_part_examined) AS header_body_part,
       p.id AS prediction_ref, i.id AS instance_ref, st.id AS study_ref
FROM xreg.prediction p
JOIN xreg.model m ON m.id = p.model_ref
JOIN xreg.instance i ON i.id = p.instance_ref
JOIN xreg.series se ON se.id = i.series_ref
JOIN xreg.study st ON st.id = se.study_ref
JOIN xreg.patient pa ON pa.id = st.patient_ref;
COMMENT ON VIEW xreg.predictions IS 'Every prediction with its instance, study, patient and model';

CREATE VIEW xreg.labels AS
SELECT l.id AS label_ref, COALESCE(i.sop_instance_uid, NULL) AS sop_instance_uid,
       COALESCE(st_i.study_instance_uid, st.study_instance_uid) AS study_instance_uid,
       CASE WHEN l.instance_ref IS NULL THEN 'study' ELSE 'instance' END AS level,
       l.task, l.value, l.body_part, l.reason, l.reviewer, l.actor, l.replaced_value,
       l.replaced_source, l.created_at,
       l.id = cl.id AS is_current
FROM xreg.human_label l
LEFT JOIN xreg.instance i ON i.id = l.instance_ref
LEFT JOIN xreg.series se ON se.id = i.series_ref
LEFT JOIN xreg.study st_i ON st_i.id = se.study_ref
LEFT JOIN xreg.study st ON st.id = l.study_ref
LEFT JOIN xreg.current_label cl ON COALESCE(cl.instance_ref, 0) = COALESCE(l.instance_ref, 0)
     AND COALESCE(cl.study_ref, 0) = COALESCE(l.study_ref, 0) AND cl.task = l.task;
COMMENT ON VIEW xreg.labels IS
    'Reviewers'' labels, newest last; is_current marks the one in force per target and task';

CREATE VIEW xreg.models AS
SELECT name, sha256, task, labels, positive_label, version, metadata, created_at,
       (SELECT count(*) FROM xreg.prediction p WHERE p.model_ref = m.id) AS n_predictions,
       id AS model_ref
FROM xreg.model m;
COMMENT ON VIEW xreg.models IS 'Registered model versions and how many predictions each made';

CREATE VIEW xreg.review_queue AS
SELECT i.sop_instance_uid, st.study_instance_uid, pa.patient_id, st.study_date,
       p.task, p.label AS predicted_label, p.body_part AS predicted_body_part, p.confidence,
       COALESCE(i.body_part_examined, se.body_part_examined) AS header_body_part,
       concat_ws(', ',
                 CASE WHEN p.confidence < thr.value THEN 'low confidence' END,
                 CASE WHEN hdr.disagrees THEN 'disagrees with header' END) AS reason,
       p.model_name, p.created_at AS predicted_at, i.id AS instance_ref
FROM xreg.current_prediction p
JOIN xreg.instance i ON i.id = p.instance_ref
JOIN xreg.series se ON se.id = i.series_ref
JOIN xreg.study st ON st.id = se.study_ref
JOIN xreg.patient pa ON pa.id = st.patient_ref
CROSS JOIN (SELECT COALESCE((SELECT value::real FROM xreg.settings
                             WHERE key = 'review.confidence_threshold'), 0.8) AS value) thr
CROSS JOIN LATERAL (
    SELECT p.task = 'body_part'
           AND COALESCE(i.body_part_examined, se.body_part_examined) IS NOT NULL
           AND NOT EXISTS (
               SELECT FROM xreg.body_part_map b
               WHERE b.label = lower(p.label)
                 AND upper(COALESCE(i.body_part_examined, se.body_part_examined))
                     = ANY (b.header_terms)) AS disagrees
) hdr
WHERE (p.confidence < thr.value OR hdr.disagrees)
  AND NOT EXISTS (SELECT FROM xreg.human_label l
                  WHERE l.instance_ref = p.instance_ref AND l.task = p.task)
  AND NOT EXISTS (SELECT FROM xreg.human_label l
                  WHERE l.study_ref = st.id AND l.task = p.task);
COMMENT ON VIEW xreg.review_queue IS
    'Predictions to check: confidence below the review.confidence_threshold setting, or a body '
    'part disagreeing with the header, with no reviewer label yet for that instance (or study) '
    'and task';

CREATE VIEW xreg.body_part_mismatch AS
SELECT i.sop_instance_uid, st.study_instance_uid, pa.patient_id, st.study_date,
       COALESCE(i.body_part_examined, se.body_part_examined) AS header_body_part,
       COALESCE(l.body_part, p.body_part) AS body_part,
       COALESCE(l.value, p.label) AS label,
       CASE WHEN l.id IS NOT NULL THEN 'human' ELSE 'prediction' END AS source,
       CASE WHEN l.id IS NOT NULL THEN 1.0::real ELSE p.confidence END AS confidence,
       p.model_name, i.id AS instance_ref
FROM xreg.instance i
JOIN xreg.series se ON se.id = i.series_ref
JOIN xreg.study st ON st.id = se.study_ref
JOIN xreg.patient pa ON pa.id = st.patient_ref
LEFT JOIN xreg.current_prediction p ON p.instance_ref = i.id AND p.task = 'body_part'
LEFT JOIN xreg.current_label l ON l.instance_ref = i.id AND l.task = 'body_part'
WHERE (p.id IS NOT NULL OR l.id IS NOT NULL)
  AND COALESCE(i.body_part_examined, se.body_part_examined) IS NOT NULL
  AND NOT EXISTS (
      SELECT FROM xreg.body_part_map b
      WHERE b.label = lower(COALESCE(l.value, p.label))
        AND upper(COALESCE(i.body_part_examined, se.body_part_examined)) = ANY (b.header_terms));
COMMENT ON VIEW xreg.body_part_mismatch IS
    'Instances whose header Body Part Examined disagrees with the verified (else predicted) '
    'body part; instances without a header value are not listed';

CREATE VIEW xreg.daily_counts AS
SELECT day,
       count(*) FILTER (WHERE kind = 'instance') AS n_instances,
       count(DISTINCT study_ref) FILTER (WHERE kind = 'instance') AS n_studies,
       count(DISTINCT patient_ref) FILTER (WHERE kind = 'instance') AS n_patients,
       COALESCE(sum(n_bytes) FILTER (WHERE kind = 'instance'), 0) AS n_bytes,
       count(*) FILTER (WHERE kind = 'rejection') AS n_rejections,
       count(*) FILTER (WHERE kind = 'prediction') AS n_predictions,
       count(*) FILTER (WHERE kind = 'label') AS n_labels
FROM (
    SELECT i.received_at::date AS day, 'instance' AS kind, se.study_ref, st.patient_ref,
           i.n_bytes
    FROM xreg.instance i JOIN xreg.series se ON se.id = i.series_ref
    JOIN xreg.study st ON st.id = se.study_ref
    UNION ALL
    SELECT received_at::date, 'rejection', NULL, NULL, NULL FROM xreg.rejection
    UNION ALL
    SELECT created_at::date, 'prediction', NULL, NULL, NULL FROM xreg.prediction
    UNION ALL
    SELECT created_at::date, 'label', NULL, NULL, NULL FROM xreg.human_label
) e
GROUP BY day;
COMMENT ON VIEW xreg.daily_counts IS
    'Per day (in the session''s TimeZone): instances received, their studies and patients, '
    'bytes, rejections, predictions and reviewer labels';

CREATE VIEW xreg.rejections AS
SELECT spool_id, received_at, calling_ae, called_ae, peer_host, sop_class_uid,
       sop_instance_uid, dimse_status, dimse_status_hex, reason, path, created_at
FROM xreg.rejection;
COMMENT ON VIEW xreg.rejections IS 'Objects refused at reception or later (xreg.rejection)';

CREATE VIEW xreg.audit_trail AS
SELECT seq, id, at, db_role, login_role, actor, application_name, client_addr, action,
       table_name, row_key, old_row, new_row, txid
FROM xreg.audit_log;
COMMENT ON VIEW xreg.audit_trail IS 'The audit log without its hash columns, for reading';

-- -----------------------------------------------------------------------------------------------
-- Privileges. Functions are executable by PUBLIC by default: take that back, then grant what
-- each role needs. Views run with their owner's rights, so readers need no table privileges.

REVOKE ALL ON SCHEMA xreg FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA xreg FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA xreg FROM PUBLIC;

GRANT USAGE ON SCHEMA xreg TO xreg_writer, xreg_reader, xreg_reviewer;
GRANT SELECT ON public.schema_migrations TO xreg_writer;

-- The daemon: insert and update registry rows; never delete, never touch the audit log or
-- human labels.
GRANT SELECT, INSERT, UPDATE ON xreg.patient, xreg.study, xreg.series, xreg.instance,
    xreg.rejection, xreg.model, xreg.prediction, xreg.study_summary TO xreg_writer;
GRANT SELECT ON xreg.body_part_map, xreg.settings, xreg.human_label, xreg.current_prediction,
    xreg.current_label TO xreg_writer;
GRANT EXECUTE ON FUNCTION xreg.audit_serialize(), xreg.record_prediction(text, bigint, real[], text),
    xreg.study_summary_refresh(bigint), xreg.invoking_role() TO xreg_writer;

-- Admins and researchers: the views.
GRANT SELECT ON xreg.instances, xreg.studies, xreg.predictions, xreg.labels, xreg.models,
    xreg.review_queue, xreg.body_part_mismatch, xreg.daily_counts, xreg.rejections,
    xreg.audit_trail TO xreg_reader;

-- Reviewers: what readers see, plus recording labels.
GRANT xreg_reader TO xreg_reviewer;
GRANT EXECUTE ON FUNCTION xreg.record_label(text, text, text, text, text) TO xreg_reviewer;
