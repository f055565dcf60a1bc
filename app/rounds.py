"""Game rounds streamed in by game servers on `game.rounds`, one JSON object a message:

    {"round_id": "r-1", "tenant_id": "dev", "player_id": "p42", "provider": "acme",
     "bet": {"amount": 100, "currency": "EUR"}, "win": {"amount": 250, "currency": "EUR"},
     "policy": "casino", "brand_id": "b1", "region": "mt",
     "jackpots": [{"pool_id": "grand"}, {"pool_id": "daily", "contribution": {"amount": 2, "currency": "EUR"}}]}

brand_id, region and jackpots are optional. Each jackpot entry contributes to a pool: by
the pool's basis points of the bet, or the explicit contribution given. The contribution
id is the round's operation key, so the pool counts a round once however often it
arrives, and the contribution traces back to the round.

A round becomes a `play_round` command for the wallet agent that owns the player, with
the same idempotency as the HTTP path: the operation key is the provider's round id, so
a round delivered twice is applied once. Pure: parsing and validation only."""
from __future__ import annotations

from app.api.validation import InvalidRequest, amount, currency, ident, no_unknown_fields, parse_json_object
from app.domain.wallet.core import PlayRound
from app.domain.wallet.policies import DEFAULT_POLICY
from app.messages import TOPIC_REPLY_PREFIX, CommandEnvelope, request_hash, wallet_key


def parse_round(raw: bytes, received_at_ms: int, results_topic: str) -> tuple[bytes, CommandEnvelope]:
    """(partition key, command) for one round message; raises InvalidRequest."""
    body = parse_json_object(raw)
    no_unknown_fields(body, {"round_id", "tenant_id", "player_id", "provider", "bet", "win", "policy", "brand_id",
                             "region", "jackpots"})
    bet, win = body.get("bet"), body.get("win") or {"amount": 0, "currency": (body.get("bet") or {}).get("currency")}
    if not isinstance(bet, dict) or not isinstance(win, dict):
        raise InvalidRequest("`bet` and `win` must be objects of amount and currency")
    bet_minor, win_minor = amount(bet, "amount", allow_zero=True), amount(win, "amount", allow_zero=True)
    bet_currency, win_currency = currency(bet), currency(win)
    if bet_currency != win_currency:
        raise InvalidRequest("bet and win must be in one currency")
    if bet_minor == 0 and win_minor == 0:
        raise InvalidRequest("a round moves some money")
    command = PlayRound(
        round_id=ident(body, "round_id"),
        provider=ident(body, "provider"),
        bet_minor=bet_minor,
        win_minor=win_minor,
        currency=bet_currency,
        policy=body.get("policy") or DEFAULT_POLICY,
        brand_id=ident(body, "brand_id", required=False) or "",
        region=ident(body, "region", required=False) or "",
        jackpots=_jackpots(body, bet_minor, bet_currency),
    )
    tenant_id, player_id = ident(body, "tenant_id"), ident(body, "player_id")
    envelope = CommandEnvelope.wrap(
        command,
        tenant_id=tenant_id,
        operation_key=f"round:{command.provider}:{command.round_id}",
        request_hash=request_hash(body),
        now_ms=received_at_ms,
        reply_to=TOPIC_REPLY_PREFIX + results_topic,
        request_id=command.round_id,
    )
    return wallet_key(tenant_id, player_id), envelope


MAX_JACKPOTS_PER_ROUND = 8


def _jackpots(body: dict, bet_minor: int, bet_currency: str) -> tuple[tuple[str, int | None], ...]:
    entries = body.get("jackpots")
    if entries is None:
        return ()
    if not isinstance(entries, list) or len(entries) > MAX_JACKPOTS_PER_ROUND:
        raise InvalidRequest(f"`jackpots` must be a list of at most {MAX_JACKPOTS_PER_ROUND} pools")
    if entries and body.get("brand_id") is None:
        raise InvalidRequest("a round with jackpot contributions names its brand_id")
    if bet_minor == 0:
        return ()  # a round without a stake (free spins) contributes nothing
    out: dict[str, int | None] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise InvalidRequest("each jackpot entry is an object with a pool_id")
        no_unknown_fields(entry, {"pool_id", "contribution"})
        pool_id = ident(entry, "pool_id")
        explicit = entry.get("contribution")
        if explicit is not None:
            if not isinstance(explicit, dict) or currency(explicit) != bet_currency:
                raise InvalidRequest("a jackpot contribution is an amount in the bet's currency")
            explicit = amount(explicit, "amount")
        if pool_id in out:
            raise InvalidRequest(f"pool {pool_id} is named twice")
        out[pool_id] = explicit
    return tuple(out.items())
