-- The ledger: append-only double-entry legs. One row debits one account and credits
-- another by the same amount, so debits equal credits per currency by construction.
CREATE TABLE ledger_entries (
    entry_id       bigserial PRIMARY KEY,
    tenant_id      text        NOT NULL,
    operation_id   text        NOT NULL,
    leg            smallint    NOT NULL CHECK (leg >= 0),
    debit_account  text        NOT NULL,
    credit_account text        NOT NULL,
    amount_minor   bigint      NOT NULL CHECK (amount_minor > 0),
    currency       char(3)     NOT NULL,
    category       text        NOT NULL,
    reason         text        NOT NULL DEFAULT '',
    player_id      text        NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_entries_operation_leg UNIQUE (tenant_id, operation_id, leg),
    CONSTRAINT ledger_entries_two_accounts CHECK (debit_account <> credit_account)
);
CREATE INDEX ledger_entries_player ON ledger_entries (tenant_id, player_id, entry_id);

-- Corrections are new postings with a reason; nothing is ever changed or removed.
CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_append_only();

-- Where each ledger reader stands in each stream partition, written in the same
-- transaction as the rows it read.
CREATE TABLE stream_positions (
    consumer    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- A PSP webhook names only the deposit; this says which player's agent owns it.
CREATE TABLE deposit_routes (
    tenant_id  text        NOT NULL,
    deposit_id text        NOT NULL,
    player_id  text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, deposit_id)
);
