-- The jackpot pools' hash-chain entries (audit_log rows of kind 'jp_chain', written by the
-- ledger flush, see app.domain.jackpot.core.chain_audit_record) are read back per pool by
-- `python -m app.jp_verify`, which selects a pool's rows by their audit_id prefix
-- 'jp:{pool}:chain:' (storage.postgres.stores._CHAIN_RECORDS). Without this index every
-- verification would scan the whole audit log of the tenant, refusals of players
-- included; being partial, it costs nothing for the other kinds of record. The "C"
-- collation orders by bytes, so a prefix is one contiguous range of the index.
CREATE INDEX audit_log_jp_chain ON audit_log (tenant_id, audit_id COLLATE "C")
    WHERE kind = 'jp_chain';
