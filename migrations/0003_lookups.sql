-- 0003_lookups.sql: the same results as 0002 without scanning whole tables. 0002 found each
-- instance's current prediction and label by joining views built on DISTINCT ON over the whole
-- prediction and human_label tables, which PostgreSQL cannot restrict to one instance inside a
-- join: every study summary recomputation then read every prediction, so writes slowed down as
-- the registry grew (measured by tests/bench/bench-registry.c). Here each lookup is a LATERAL
-- "newest row for this instance and task" that uses the (instance_ref, ...) indexes. Views keep
-- their columns (CREATE OR REPLACE), so grants and the documentation stay as they are.

CREATE INDEX prediction_instance_task_idx ON xreg.prediction (instance_ref, task);

CREATE OR REPLACE FUNCTION xreg.study_summary_refresh(p_study_ref bigint) RETURNS void
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
        LEFT JOIN LATERAL (
            SELECT p.id, p.label, p.body_part, p.confidence,
                   CASE WHEN p.task = 'body_part' THEN NULL
                        ELSE p.label = m.positive_label END AS positive
            FROM xreg.prediction p JOIN xreg.model m ON m.id = p.model_ref
            WHERE p.instance_ref = inst.id AND p.task = t.task
            ORDER BY COALESCE(p.updated_at, p.created_at) DESC, p.id DESC LIMIT 1) p ON true
        LEFT JOIN LATERAL (
            SELECT l.id, l.value, l.body_part FROM xreg.human_label l
            WHERE l.instance_ref = inst.id AND l.task = t.task
            ORDER BY l.created_at DESC, l.id DESC LIMIT 1) l ON true
        WHERE p.id IS NOT NULL OR l.id IS NOT NULL
    ), study_label AS (
        SELECT DISTINCT ON (l.task) l.* FROM xreg.human_label l
        WHERE l.study_ref = p_study_ref ORDER BY l.task, l.created_at DESC, l.id DESC
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

CREATE OR REPLACE FUNCTION xreg.record_label(p_sop_instance_uid text, p_study_instance_uid text,
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
        SELECT l.value, 'human' INTO v_prev, v_prev_source FROM xreg.human_label l
        WHERE l.instance_ref = v_instance AND l.task = p_task
        ORDER BY l.created_at DESC, l.id DESC LIMIT 1;
        IF NOT FOUND THEN
            SELECT CASE WHEN p.task = 'body_part' THEN p.label
                        WHEN p.label = m.positive_label THEN 'present' ELSE 'absent' END,
                   'prediction'
            INTO v_prev, v_prev_source
            FROM xreg.prediction p JOIN xreg.model m ON m.id = p.model_ref
            WHERE p.instance_ref = v_instance AND p.task = p_task
            ORDER BY COALESCE(p.updated_at, p.created_at) DESC, p.id DESC LIMIT 1;
        END IF;
    ELSE
        SELECT st.id INTO v_study FROM xreg.study st
        WHERE st.study_instance_uid = p_study_instance_uid;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'study "%" is not registered', p_study_instance_uid
                USING ERRCODE = 'no_data_found';
        END IF;
        SELECT l.value, 'human' INTO v_prev, v_prev_source FROM xreg.human_label l
        WHERE l.study_ref = v_study AND l.task = p_task
        ORDER BY l.created_at DESC, l.id DESC LIMIT 1;
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
LEFT JOIN LATERAL (
    SELECT p.body_part, p.label, p.confidence, m.name AS model_name,
           CASE WHEN p.task = 'body_part' THEN NULL ELSE p.label = m.positive_label END AS positive
    FROM xreg.prediction p JOIN xreg.model m ON m.id = p.model_ref
    WHERE p.instance_ref = i.id AND p.task = 'body_part'
    ORDER BY COALESCE(p.updated_at, p.created_at) DESC, p.id DESC LIMIT 1) bp ON true
LEFT JOIN LATERAL (
    SELECT p.body_part, p.label, p.confidence, m.name AS model_name,
           CASE WHEN p.task = 'body_part' THEN NULL ELSE p.label = m.positive_label END AS positive
    FROM xreg.prediction p JOIN xreg.model m ON m.id = p.model_ref
    WHERE p.instance_ref = i.id AND p.task = 'implant'
    ORDER BY COALESCE(p.updated_at, p.created_at) DESC, p.id DESC LIMIT 1) im ON true
LEFT JOIN LATERAL (
    SELECT p.body_part, p.label, p.confidence, m.name AS model_name,
           CASE WHEN p.task = 'body_part' THEN NULL ELSE p.label = m.positive_label END AS positive
    FROM xreg.prediction p JOIN xreg.model m ON m.id = p.model_ref
    WHERE p.instance_ref = i.id AND p.task = 'fracture'
    ORDER BY COALESCE(p.updated_at, p.created_at) DESC, p.id DESC LIMIT 1) fr ON true
LEFT JOIN LATERAL (
    SELECT l.value, l.body_part FROM xreg.human_label l
    WHERE l.instance_ref = i.id AND l.task = 'body_part'
    ORDER BY l.created_at DESC, l.id DESC LIMIT 1) lbp ON true
LEFT JOIN LATERAL (
    SELECT l.value, l.body_part FROM xreg.human_label l
    WHERE l.instance_ref = i.id AND l.task = 'implant'
    ORDER BY l.created_at DESC, l.id DESC LIMIT 1) lim ON true
LEFT JOIN LATERAL (
    SELECT l.value, l.body_part FROM xreg.human_label l
    WHERE l.instance_ref = i.id AND l.task = 'fracture'
    ORDER BY l.created_at DESC, l.id DESC LIMIT 1) lfr ON true;

CREATE OR REPLACE VIEW xreg.body_part_mismatch AS
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
LEFT JOIN LATERAL (
    SELECT p.id, p.body_part, p.label, p.confidence, m.name AS model_name
    FROM xreg.prediction p JOIN xreg.model m ON m.id = p.model_ref
    WHERE p.instance_ref = i.id AND p.task = 'body_part'
    ORDER BY COALESCE(p.updated_at, p.created_at) DESC, p.id DESC LIMIT 1) p ON true
LEFT JOIN LATERAL (
    SELECT l.id, l.value, l.body_part FROM xreg.human_label l
    WHERE l.instance_ref = i.id AND l.task = 'body_part'
    ORDER BY l.created_at DESC, l.id DESC LIMIT 1) l ON true
WHERE (p.id IS NOT NULL OR l.id IS NOT NULL)
  AND COALESCE(i.body_part_examined, se.body_part_examined) IS NOT NULL
  AND NOT EXISTS (
      SELECT FROM xreg.body_part_map b
      WHERE b.label = lower(COALESCE(l.value, p.label))
        AND upper(COALESCE(i.body_part_examined, se.body_part_examined)) = ANY (b.header_terms));

CREATE OR REPLACE VIEW xreg.labels AS
SELECT l.id AS label_ref, COALESCE(i.sop_instance_uid, NULL) AS sop_instance_uid,
       COALESCE(st_i.study_instance_uid, st.study_instance_uid) AS study_instance_uid,
       CASE WHEN l.instance_ref IS NULL THEN 'study' ELSE 'instance' END AS level,
       l.task, l.value, l.body_part, l.reason, l.reviewer, l.actor, l.replaced_value,
       l.replaced_source, l.created_at,
       NOT EXISTS (SELECT FROM xreg.human_label n
                   WHERE n.task = l.task
                     AND n.instance_ref IS NOT DISTINCT FROM l.instance_ref
                     AND n.study_ref IS NOT DISTINCT FROM l.study_ref
                     AND (n.created_at, n.id) > (l.created_at, l.id)) AS is_current
FROM xreg.human_label l
LEFT JOIN xreg.instance i ON i.id = l.instance_ref
LEFT JOIN xreg.series se ON se.id = i.series_ref
LEFT JOIN xreg.study st_i ON st_i.id = se.study_ref
LEFT JOIN xreg.study st ON st.id = l.study_ref;

-- -----------------------------------------------------------------------------------------------
-- The chain head is updated once per transaction, not once per audit row. 0002 updated the
-- head row for every audit row; inside one transaction those versions cannot be pruned, so
-- each further row walked a longer chain of them (2000 audited rows in one transaction took
-- 5 s). Now:
--   * the BEFORE INSERT trigger still locks the head row (FOR UPDATE: one writer at a time, and
--     under REPEATABLE READ a head changed since the snapshot is a serialization failure) and
--     chains to this transaction's own newest audit row when it has one (seq above the head),
--     else to the head;
--   * a deferred constraint trigger moves the head to the transaction's last row at COMMIT.
-- Chaining from the head rather than from the newest row found keeps a deleted tail visible:
-- rows appended after one are chained to the deleted row's hash, leaving a gap.

-- Same text as 0002's SQL function, in PL/pgSQL: a SQL function called from PL/pgSQL is planned
-- anew on every call (0.8 ms each), PL/pgSQL caches the plan.
CREATE OR REPLACE FUNCTION xreg.audit_canonical(r xreg.audit_log) RETURNS text
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN 'xreg-audit-v1'
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
        || xreg.audit_field(r.new_row::text);
END
$$;

CREATE OR REPLACE FUNCTION xreg.audit_chain() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    head record;
    mine record;
BEGIN
    SELECT seq, hash INTO STRICT head FROM xreg.audit_chain_head WHERE singleton FOR UPDATE;
    SELECT seq, hash INTO mine FROM xreg.audit_log WHERE seq > head.seq
        ORDER BY seq DESC LIMIT 1;
    IF FOUND THEN
        head := mine;
    END IF;
    -- Taken after the lock, so that time follows the chain.
    NEW.at := clock_timestamp();
    NEW.seq := head.seq + 1;
    NEW.prev_hash := head.hash;
    NEW.hash := sha256(head.hash || convert_to(xreg.audit_canonical(NEW), 'UTF8'));
    RETURN NEW;
END
$$;

-- SECURITY DEFINER: at COMMIT it runs outside the audit row trigger, as the writing role, which
-- has no privilege on the chain head.
CREATE FUNCTION xreg.audit_chain_commit() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Fires at COMMIT for each row of the transaction; only its last row moves the head.
    UPDATE xreg.audit_chain_head SET seq = NEW.seq, hash = NEW.hash, last_id = NEW.id
        WHERE singleton AND seq < NEW.seq
          AND NEW.seq = (SELECT max(seq) FROM xreg.audit_log);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION xreg.audit_chain_commit() IS
    'deferred AFTER INSERT trigger on xreg.audit_log: moves the chain head at COMMIT';
REVOKE EXECUTE ON FUNCTION xreg.audit_chain_commit() FROM PUBLIC;

CREATE CONSTRAINT TRIGGER audit_log_chain_commit AFTER INSERT ON xreg.audit_log
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION xreg.audit_chain_commit();
