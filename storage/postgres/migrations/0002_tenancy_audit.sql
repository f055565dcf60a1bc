-- Tenancy and audit: an append-only audit log, and row-level security keeping tenants
-- apart in every table that carries a tenant_id.

-- The audit log: every refusal and every configuration change of a player, with its
-- reason (app.domain.audit.AuditRecord). The ledger flush stores the records in the same
-- transaction as the postings of the same batch; audit_id is deterministic per command
-- message, so a redelivered batch stores each record once.
CREATE TABLE audit_log (
    -- Insertion order, so records with the same created_at still list in a stable order.
    audit_seq   bigserial   PRIMARY KEY,
    tenant_id   text        NOT NULL,
    audit_id    text        NOT NULL,
    player_id   text        NOT NULL DEFAULT '',
    kind        text        NOT NULL,
    code        text        NOT NULL,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT audit_log_tenant_audit UNIQUE (tenant_id, audit_id)
);
CREATE INDEX audit_log_player ON audit_log (tenant_id, player_id, created_at DESC, audit_seq DESC);

-- An audit trail that can be edited proves nothing, so it is append-only like the ledger.
-- The function names the table it guards, so one function serves every such table.
CREATE FUNCTION refuse_change_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP;
END;
$$;
CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change_append_only();

-- The role every tenant-facing query runs as (storage.postgres.stores.tenant_transaction
-- switches to it with SET LOCAL ROLE). The service usually connects as a superuser, and
-- superusers bypass row-level security, so the policies below would not apply to it;
-- this role has no such privilege and cannot log in. Roles belong to the whole cluster
-- while migrations run per database (the tests create one database per run in a shared
-- cluster), hence the existence check, and the exception handler for two databases
-- migrating at the same moment.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bankroll_tenant') THEN
        BEGIN
            CREATE ROLE bankroll_tenant NOLOGIN NOSUPERUSER NOBYPASSRLS;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another database's migration created it first
        END;
    END IF;
END;
$$;

-- The system writers (the ledger flush writes several tenants' rows in one batch) and the
-- reconciliation keep the connection's own role, so that role must not be subject to the
-- policies below; a superuser or a BYPASSRLS role is not. A role that is would see its
-- flush refused forever, so the migration refuses to run instead. A role that is not a
-- superuser may switch to bankroll_tenant only as one of its members.
DO $$
DECLARE
    me pg_roles%ROWTYPE;
BEGIN
    SELECT * INTO me FROM pg_roles WHERE rolname = current_user;
    IF NOT (me.rolsuper OR me.rolbypassrls) THEN
        RAISE EXCEPTION 'role % is subject to row-level security: Bankroll''s system writers need a superuser or a BYPASSRLS role', current_user;
    END IF;
    IF NOT me.rolsuper AND NOT pg_has_role(current_user, 'bankroll_tenant', 'MEMBER') THEN
        EXECUTE format('GRANT bankroll_tenant TO %I', current_user);
    END IF;
END;
$$;

-- Tenants read the ledger; only the system flush writes it. Deposit routes are claimed
-- through the API on behalf of one tenant, and audit records may be written that way too.
GRANT SELECT ON ledger_entries TO bankroll_tenant;
GRANT SELECT, INSERT ON deposit_routes, audit_log TO bankroll_tenant;
GRANT USAGE ON SEQUENCE ledger_entries_entry_id_seq, audit_log_audit_seq_seq TO bankroll_tenant;

-- One policy per tenant table, for every command: a row is visible, and may be written,
-- only when its tenant_id is the session's bankroll.tenant_id. With no tenant set,
-- current_setting(..., true) is NULL and nothing matches; once a session has set the
-- variable locally it reads as '' after that transaction, which NULLIF turns back into
-- "no tenant". FORCE applies the policies to the tables' owner as well (unless it is a
-- superuser or BYPASSRLS, see above).
ALTER TABLE ledger_entries ENABLE ROW LEVEL SECURITY;
ALTER TABLE ledger_entries FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON ledger_entries
    USING (tenant_id = NULLIF(current_setting('bankroll.tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('bankroll.tenant_id', true), ''));

ALTER TABLE deposit_routes ENABLE ROW LEVEL SECURITY;
ALTER TABLE deposit_routes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON deposit_routes
    USING (tenant_id = NULLIF(current_setting('bankroll.tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('bankroll.tenant_id', true), ''));

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_log
    USING (tenant_id = NULLIF(current_setting('bankroll.tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('bankroll.tenant_id', true), ''));
