-- 0004_audit_speed.sql: cheaper audit rows. A SQL function with a SET clause is never inlined:
-- xreg.audit_field (14 calls per audit row, from xreg.audit_canonical) and xreg.invoking_role
-- ran as separate function calls, each saving and restoring search_path. Both only call
-- built-in functions and operators and are only reached from functions whose search_path is
-- pinned (pg_catalog, pg_temp), so they can do without their own; inlined, they are plain
-- expressions in the caller's cached plan.

CREATE OR REPLACE FUNCTION xreg.audit_field(v text) RETURNS text
    LANGUAGE sql IMMUTABLE
AS $$
    SELECT E'\n' || CASE WHEN v IS NULL THEN '-' ELSE octet_length(v)::text || ':' || v END
$$;

CREATE OR REPLACE FUNCTION xreg.invoking_role() RETURNS text
    LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN current_setting('role') = 'none' THEN session_user::text
                ELSE current_setting('role') END
$$;
