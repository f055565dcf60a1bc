"""Game rounds streamed in by game servers on `game.rounds`, one JSON object a message:

    {"round_id": "r-1", "tenant_id": "dev", "player_id": "p42", "provider": "acme",
     "bet": {"amount": 100, "currency": "EUR"}, "win": {"amount": 250, "currency": "EUR"},
     "policy": "casino"}

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
    no_unknown_fields(body, {"round_id", "tenant_id", "player_id", "provider", "bet", "win", "policy"})
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
