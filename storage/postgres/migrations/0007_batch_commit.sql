-- An agent's batch in one round trip: the statements PostgresAgentStore sent one by one
-- (records, postings, audit, answers, claims, stream positions), each a round trip of
-- its own, run inside one function call, which is one statement and so one transaction.
-- Under HTTP load batches are small and the round trips, not the rows, were what the
-- worker and PostgreSQL spent their time on.
--
-- A refusal rolls the whole call back and names itself by SQLSTATE:
--   BR001 stale records: a record's stored version is not the one the batch decided on
--         (DETAIL: the refused keys, hex, comma separated);
--   BR002 postings stored already: an (operation_id, leg) of the batch is in the ledger;
--   BR003 claim taken: an id the batch claims belongs to another player (DETAIL: a JSON
--         array of [tenant_id, route, player_id]).
-- Every statement of a VOLATILE function takes a fresh snapshot under READ COMMITTED, so
-- the claims check sees claims other transactions committed while the insert waited.
CREATE FUNCTION bankroll_commit_batch(
    p_agent text,
    r_keys bytea[], r_tenants text[], r_partitions int4[], r_versions int8[], r_priors int8[], r_records bytea[],
    e_tenants text[], e_operations text[], e_legs int2[], e_debits text[], e_credits text[], e_amounts int8[],
    e_currencies text[], e_categories text[], e_reasons text[], e_players text[], e_created timestamptz[],
    a_tenants text[], a_ids text[], a_players text[], a_kinds text[], a_codes text[], a_details jsonb[],
    a_created timestamptz[],
    n_keys bytea[], n_operations text[], n_tenants text[], n_answers bytea[], n_answered timestamptz[],
    c_tenants text[], c_routes text[], c_players text[],
    p_consumer text, p_topics text[], p_partitions int4[], p_offsets int8[]
) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    written bytea[];
    inserted bigint;
    taken jsonb;
BEGIN
    IF cardinality(r_keys) > 0 THEN
        WITH w AS (
            INSERT INTO agent_records AS r (agent, key, tenant_id, partition, version, prior_version, record)
            SELECT p_agent, * FROM unnest(r_keys, r_tenants, r_partitions, r_versions, r_priors, r_records)
            ON CONFLICT (agent, key) DO UPDATE
            SET version = EXCLUDED.version, prior_version = EXCLUDED.prior_version, record = EXCLUDED.record,
                partition = EXCLUDED.partition, updated_at = now()
            WHERE r.version = EXCLUDED.prior_version
            RETURNING r.key
        )
        SELECT coalesce(array_agg(w.key), '{}') INTO written FROM w;
        IF cardinality(written) <> cardinality(r_keys) THEN
            RAISE EXCEPTION 'stale records' USING ERRCODE = 'BR001',
                DETAIL = (SELECT string_agg(encode(k, 'hex'), ',') FROM unnest(r_keys) AS k WHERE k <> ALL (written));
        END IF;
    END IF;
    IF cardinality(e_tenants) > 0 THEN
        INSERT INTO ledger_entries (tenant_id, operation_id, leg, debit_account, credit_account,
                                    amount_minor, currency, category, reason, player_id, created_at)
        SELECT * FROM unnest(e_tenants, e_operations, e_legs, e_debits, e_credits, e_amounts, e_currencies,
                             e_categories, e_reasons, e_players, e_created)
        ON CONFLICT ON CONSTRAINT ledger_entries_operation_leg DO NOTHING;
        GET DIAGNOSTICS inserted = ROW_COUNT;
        IF inserted <> cardinality(e_tenants) THEN
            RAISE EXCEPTION 'postings stored already' USING ERRCODE = 'BR002';
        END IF;
    END IF;
    IF cardinality(a_tenants) > 0 THEN
        INSERT INTO audit_log (tenant_id, audit_id, player_id, kind, code, detail, created_at)
        SELECT * FROM unnest(a_tenants, a_ids, a_players, a_kinds, a_codes, a_details, a_created)
        ON CONFLICT (tenant_id, audit_id) DO NOTHING;
    END IF;
    IF cardinality(n_keys) > 0 THEN
        INSERT INTO operation_answers (agent, key, operation_key, tenant_id, answer, answered_at)
        SELECT p_agent, * FROM unnest(n_keys, n_operations, n_tenants, n_answers, n_answered)
        ON CONFLICT (agent, key, operation_key) DO NOTHING;
    END IF;
    IF cardinality(c_tenants) > 0 THEN
        INSERT INTO deposit_routes (tenant_id, deposit_id, player_id)
        SELECT * FROM unnest(c_tenants, c_routes, c_players)
        ON CONFLICT (tenant_id, deposit_id) DO NOTHING;
        SELECT jsonb_agg(jsonb_build_array(r.tenant_id, r.deposit_id, r.player_id)) INTO taken
        FROM deposit_routes r JOIN unnest(c_tenants, c_routes, c_players) AS n(tenant_id, route, player_id)
            ON r.tenant_id = n.tenant_id AND r.deposit_id = n.route
        WHERE r.player_id <> n.player_id;
        IF taken IS NOT NULL THEN
            RAISE EXCEPTION 'claim taken' USING ERRCODE = 'BR003', DETAIL = taken::text;
        END IF;
    END IF;
    IF cardinality(p_topics) > 0 THEN
        INSERT INTO stream_positions (consumer, topic, partition, next_offset)
        SELECT p_consumer, * FROM unnest(p_topics, p_partitions, p_offsets)
        ON CONFLICT (consumer, topic, partition) DO UPDATE
        SET next_offset = GREATEST(stream_positions.next_offset, EXCLUDED.next_offset), updated_at = now();
    END IF;
END
$$;
