-- 0005_classification.sql: what xregd's classification adds to the registry (issue 6).
-- (Developed beside 0003_lookups.sql and 0004_audit_speed.sql; they touch different objects.)
--
-- 1. xreg.classification_issue: an instance registered without some or all of its predictions,
--    and why (unsupported transfer syntax, a pixels.* limit, no pixel data, a decode or model
--    error). Written by the daemon in the instance's own transaction; audited.
-- 2. Decision thresholds for the binary tasks: xreg.prediction.threshold and a
--    record_prediction() that takes it (the label is then "present" when P(present) >= threshold
--    instead of the most probable class).
-- 3. xreg.review_queue lists unclassified instances too (same columns, more rows), and
--    xreg.classification_issues shows every issue with whether a later prediction resolved it.

CREATE TABLE xreg.classification_issue (
    instance_ref bigint PRIMARY KEY REFERENCES xreg.instance (id),
    task text CHECK (task IN ('body_part', 'implant', 'fracture')),
    reason_code text NOT NULL CHECK (reason_code ~ '^[a-z_]{1,32}$'),
    reason text NOT NULL CHECK (reason <> ''),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz
);
COMMENT ON TABLE xreg.classification_issue IS
    'Instances the daemon registered but could not (fully) classify, with the reason; one row per '
    'instance, the newest reason wins. Listed in xreg.review_queue until a prediction resolves it.';
COMMENT ON COLUMN xreg.classification_issue.task IS
    'the task whose model failed; NULL when no model could run (the pixels could not be decoded)';
COMMENT ON COLUMN xreg.classification_issue.reason_code IS
    'unsupported (transfer syntax or pixel format), limit (a pixels.* limit), no_pixels, '
    'decode_error, model_error';

CREATE TRIGGER classification_issue_touch BEFORE UPDATE ON xreg.classification_issue
    FOR EACH ROW EXECUTE FUNCTION xreg.touch_updated_at();
CREATE TRIGGER classification_issue_audit AFTER INSERT OR UPDATE OR DELETE
    ON xreg.classification_issue
    FOR EACH ROW EXECUTE FUNCTION xreg.audit_row_change('instance_ref');

ALTER TABLE xreg.prediction ADD COLUMN threshold real
    CHECK (threshold IS NULL OR (threshold > 0 AND threshold < 1));
COMMENT ON COLUMN xreg.prediction.threshold IS
    'binary tasks: the decision threshold on P(positive) that chose label; NULL: the most '
    'probable class';

-- As the 0002 function, with a decision threshold for implant/fracture models (NULL: the most
-- probable class, as before). confidence stays the probability of the chosen label, so a
-- positive decided below 0.5 shows as a low-confidence prediction in the review queue.
CREATE FUNCTION xreg.record_prediction(p_sop_instance_uid text, p_model_ref bigint,
                                       p_probabilities real[], p_preprocessing text,
                                       p_threshold real)
    RETURNS bigint
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m xreg.model;
    inst_id bigint;
    study_id bigint;
    best integer;
    pos integer;
    conf real;
    lbl text;
    probs jsonb;
    thr real;
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
    IF p_threshold IS NOT NULL AND NOT (p_threshold > 0 AND p_threshold < 1) THEN
        RAISE EXCEPTION 'threshold must be in (0, 1), got %', p_threshold
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT i.id, se.study_ref INTO inst_id, study_id
    FROM xreg.instance i JOIN xreg.series se ON se.id = i.series_ref
    WHERE i.sop_instance_uid = p_sop_instance_uid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'instance "%" is not registered', p_sop_instance_uid
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    pos := array_position(m.labels, m.positive_label);
    IF m.task <> 'body_part' AND p_threshold IS NOT NULL AND pos IS NOT NULL THEN
        thr := p_threshold;
        IF p_probabilities[pos] >= thr THEN
            best := pos;
        ELSE
            SELECT o INTO best FROM unnest(p_probabilities) WITH ORDINALITY u(p, o)
            WHERE o <> pos ORDER BY p DESC, o LIMIT 1;
        END IF;
        conf := p_probabilities[best];
    ELSE
        SELECT o, p INTO best, conf FROM unnest(p_probabilities) WITH ORDINALITY u(p, o)
        ORDER BY p DESC, o LIMIT 1;
    END IF;
    lbl := m.labels[best];
    SELECT jsonb_object_agg(l, p) INTO probs FROM unnest(m.labels, p_probabilities) u(l, p);
    INSERT INTO xreg.prediction AS t
        (instance_ref, model_ref, task, label, body_part, probabilities, confidence,
         preprocessing, threshold)
    VALUES (inst_id, m.id, m.task, lbl,
            CASE WHEN m.task = 'body_part' THEN
                (SELECT b.dicom_term FROM xreg.body_part_map b WHERE b.label = lower(lbl))
            END,
            probs, conf, NULLIF(p_preprocessing, ''), thr)
    ON CONFLICT (instance_ref, model_ref) DO UPDATE SET
        label = EXCLUDED.label,
        body_part = EXCLUDED.body_part,
        probabilities = EXCLUDED.probabilities,
        confidence = EXCLUDED.confidence,
        preprocessing = EXCLUDED.preprocessing,
        threshold = EXCLUDED.threshold
    WHERE (t.label, t.body_part, t.probabilities, t.confidence, t.preprocessing, t.threshold)
        IS DISTINCT FROM
          (EXCLUDED.label, EXCLUDED.body_part, EXCLUDED.probabilities, EXCLUDED.confidence,
           EXCLUDED.preprocessing, EXCLUDED.threshold);
    RETURN study_id;
END
$$;
COMMENT ON FUNCTION xreg.record_prediction(text, bigint, real[], text, real) IS
    'upserts the prediction of one model for one instance, deciding binary tasks at the given '
    'threshold (NULL: most probable class); returns the study id';

CREATE VIEW xreg.classification_issues AS
SELECT i.sop_instance_uid, st.study_instance_uid, pa.patient_id, st.study_date,
       c.task, c.reason_code, c.reason, i.transfer_syntax_uid, i.rows, i.columns,
       i.number_of_frames, c.created_at, c.updated_at,
       EXISTS (SELECT FROM xreg.prediction p
               WHERE p.instance_ref = c.instance_ref AND (c.task IS NULL OR p.task = c.task)
                 AND COALESCE(p.updated_at, p.created_at)
                     > COALESCE(c.updated_at, c.created_at)) AS resolved,
       i.id AS instance_ref
FROM xreg.classification_issue c
JOIN xreg.instance i ON i.id = c.instance_ref
JOIN xreg.series se ON se.id = i.series_ref
JOIN xreg.study st ON st.id = se.study_ref
JOIN xreg.patient pa ON pa.id = st.patient_ref;
COMMENT ON VIEW xreg.classification_issues IS
    'Instances registered without (some of) their predictions, with the reason; resolved when a '
    'prediction for that task arrived later (e.g. the object was sent again after an upgrade)';

-- The 0002 view, plus one row per unresolved classification issue without a reviewer label.
CREATE OR REPLACE VIEW xreg.review_queue AS
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
                  WHERE l.study_ref = st.id AND l.task = p.task)
UNION ALL
SELECT c.sop_instance_uid, c.study_instance_uid, c.patient_id, c.study_date,
       c.task, NULL::text, NULL::text, NULL::real,
       COALESCE(i.body_part_examined, se.body_part_examined),
       'not classified (' || c.reason_code || '): ' || c.reason,
       NULL::text, COALESCE(c.updated_at, c.created_at), c.instance_ref
FROM xreg.classification_issues c
JOIN xreg.instance i ON i.id = c.instance_ref
JOIN xreg.series se ON se.id = i.series_ref
WHERE NOT c.resolved
  AND NOT EXISTS (SELECT FROM xreg.human_label l
                  WHERE l.instance_ref = c.instance_ref
                    AND l.task = COALESCE(c.task, 'body_part'));
COMMENT ON VIEW xreg.review_queue IS
    'Predictions to check: confidence below the review.confidence_threshold setting, or a body '
    'part disagreeing with the header, with no reviewer label yet for that instance (or study) '
    'and task; and instances that could not be classified (reason "not classified (CODE): ...", '
    'task NULL when no model could run), until a prediction or a reviewer label resolves them';

REVOKE EXECUTE ON FUNCTION xreg.record_prediction(text, bigint, real[], text, real) FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON xreg.classification_issue TO xreg_writer;
GRANT EXECUTE ON FUNCTION xreg.record_prediction(text, bigint, real[], text, real)
    TO xreg_writer;
GRANT SELECT ON xreg.classification_issues TO xreg_reader;
