-- The agents' state in PostgreSQL, the long-term truth (SPEC §5). A worker commits each
-- batch in one transaction: the postings and audit records, the records the batch
-- changed, the answers of the operations it applied, the ids it claimed and the stream
-- positions it reached. A worker whose changelog is empty or behind (a restarted
-- embedded broker, a lost production broker) restores its partitions from here before
-- it takes traffic.

-- The latest record of every key of every agent: the wallet of tenant|player, the pool
-- of tenant|pool. `version` rises with every change; a batch writes a record only over
-- the version it was decided on (`prior_version`), so a worker that lost its partition
-- cannot overwrite its successor's writes.
CREATE TABLE agent_records (
    agent      text        NOT NULL,
    key        bytea       NOT NULL,
    tenant_id  text        NOT NULL,
    partition  integer     NOT NULL,
    version       bigint      NOT NULL,
    prior_version bigint      NOT NULL,
    record        bytea       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, key)
);
CREATE INDEX agent_records_partition ON agent_records (agent, partition);

-- The answer of every operation an agent applied, by the key it was asked under: what a
-- request replayed after the record's short window answers, for at least the retention
-- period (IDEMPOTENCY_RETENTION_S), after which the worker deletes it.
CREATE TABLE operation_answers (
    agent         text        NOT NULL,
    key           bytea       NOT NULL,
    operation_key text        NOT NULL,
    tenant_id     text        NOT NULL,
    answer        bytea       NOT NULL,
    answered_at   timestamptz NOT NULL,
    PRIMARY KEY (agent, key, operation_key)
);
CREATE INDEX operation_answers_answered_at ON operation_answers (answered_at);

-- Both tables are written by the workers, system writers like the ledger flush; tenants
-- never read them, and the policies keep any tenant session away from other tenants' rows.
ALTER TABLE agent_records ENABLE ROW LEVEL SECURITY;
ALTER TABLE agent_records FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON agent_records
    USING (tenant_id = NULLIF(current_setting('bankroll.tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('bankroll.tenant_id', true), ''));

ALTER TABLE operation_answers ENABLE ROW LEVEL SECURITY;
ALTER TABLE operation_answers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON operation_answers
    USING (tenant_id = NULLIF(current_setting('bankroll.tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('bankroll.tenant_id', true), ''));
