-- Every route names its kind: a deposit's route was its bare id, so a deposit whose id is
-- `bet:b1` had the route of bet b1. Deposit routes get the `deposit:` prefix the other
-- kinds already had (`bet:`, `withdrawal:`). Rows written before this migration whose id
-- begins with another kind's prefix were claimed as that kind, so they keep it.
UPDATE deposit_routes SET deposit_id = 'deposit:' || deposit_id
WHERE deposit_id NOT LIKE 'bet:%' AND deposit_id NOT LIKE 'withdrawal:%';

COMMENT ON TABLE deposit_routes IS
    'The owner of every id a player''s operation takes for good, as kind:id (deposit, bet, withdrawal, bonus, fx, adjustment): webhooks and settlements find the owning player here, and an id is never taken twice in a tenant.';
