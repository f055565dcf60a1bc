"""The jackpot pool aggregate: commands, result codes, events, and the pure functions

    decide(state, command, ctx) -> Decision(outcome, events, postings, audit, payouts)
    evolve(state, events) -> state

One record per pool (the agent's key is pool_id). Time, the server seed, retention and
the payout timings come in through ``ctx``; nothing here awaits, reads a clock or draws
from anything but the seed it is given.

Idempotency. Commands that carry their own id are idempotent on it: Contribute on
contribution_id, Trigger on trigger_id, CreatePool on the pool, Tick on tick_id when it
did something. Reconfigure and RetryPayout use ``ctx.operation_key`` (the admin's
idempotency key; "" for none). The request hash is computed here from the command, so
formatting of the wire body cannot make a replay look like a conflict. A replay returns
the recorded result and re-emits the recorded postings, payout requests and audit chain
records, because the first run's outputs may never have left the process; the ledger
dedupes postings on (operation_id, leg), the wallet dedupes credits on the payout key and
the audit store dedupes on audit_id. A rejection changes nothing, not even the record of
operation ids. Payout saga replies (PayoutCredited, PayoutFailed) need no key: they are
idempotent by the win's state, so duplicates and reorders change nothing twice.

Money. Every change is a posting (see the account helpers below):
    contribution  JACKPOT_CONTRIBUTIONS:{brand} -> JACKPOT_LIABILITY:{pool}[:{tier}]        (and :reserve)
    seed          ADJUSTMENTS:jackpot_seed, then the tier's reserve first -> JACKPOT_LIABILITY
    drop          JACKPOT_LIABILITY -> PAYOUTS:jackpot, pending the wallet's credit of the winner
    lower cap     JACKPOT_LIABILITY -> its reserve
JACKPOT_CONTRIBUTIONS:{brand_id}:{CUR} is the clearing account of the brand that took the
bet: the round's settlement moves the contributed part of the stake into it from
PROVIDER_SETTLEMENT, so per-brand shares of a network pool stay visible in the ledger.
Conservation, per pool and to the minor unit:
    contributions + seeds funded by the operator == sizes + reserves + payouts requested.

Audit. Every pool creation, configuration and limit change, seed commitment, seeding,
drop-point commitment, drop and reveal is appended to the pool's hash chain (chain.py).
The pool record keeps the chain's head; each new entry travels twice: in a
ChainAppended event (evolve advances the head and checks the link) and as an audit
record in Decision.audit (the agent stores it, like the wallet's audit records).
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Callable, Iterable, Union

from app.domain.audit import AuditRecord
from app.domain import idempotency
from app.domain.errors import InvariantViolation
from app.domain.jackpot.chain import ChainEntry, ChainHead, make_entry
from app.domain.jackpot.rng import (
    PPB, commit_point, deadline_winner_index, drop_point, ppb_to_text, round_wins, seed_commitment,
)
from app.domain.jackpot.state import (
    CLOSED, CREDITED, FAILED, MAIN_TIER, OPEN, PAYOUT_REQUESTED, POOL_KINDS, LastWin, OperationRecord,
    Participant, PayoutRequest, PoolConfig, PoolState, TierConfig, TierState, Totals, Win, payout_key,
)
from app.domain.ledger import Posting, check_postings, system_account
from app.domain.money import MAX_AMOUNT_MINOR, is_amount_minor, is_currency

BPS = 10_000
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # brand and region ids: no ":" so account names parse
# Pool ids have no "_" either, so the payout key jp_p_{pool}_{trigger} names one pool and one
# trigger: the pool id ends at the first "_" after the prefix.
_POOL_ID = re.compile(r"^[A-Za-z0-9.-]{1,64}$")
# Tier names also have no "-", so engine trigger ids "auto-{tier}-..." cannot collide.
_TIER = re.compile(r"^[a-z0-9_]{1,32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
ENGINE_TRIGGER_PREFIX = "auto-"


class JackpotResult(StrEnum):
    CREATED = "created"
    OK = "ok"
    # Its postings' operation ids are in the ledger already: applied long ago, its answer
    # no longer kept (a contribution redelivered after the retention).
    OPERATION_ALREADY_APPLIED = "operation_already_applied"
    POOL_EXISTS = "pool_exists"
    POOL_NOT_FOUND = "pool_not_found"
    INVALID_CONFIG = "invalid_config"
    CURRENCY_MISMATCH = "currency_mismatch"
    BRAND_NOT_IN_POOL = "brand_not_in_pool"
    REGION_NOT_IN_POOL = "region_not_in_pool"
    INVALID_CONTRIBUTION = "invalid_contribution"
    BET_BELOW_MINIMUM = "bet_below_minimum"
    POOL_CLOSED = "pool_closed"
    TIER_NOT_FOUND = "tier_not_found"
    INVALID_TRIGGER = "invalid_trigger"
    TRIGGER_NOT_ALLOWED = "trigger_not_allowed"
    TRIGGER_EXISTS = "trigger_exists"
    POOL_EMPTY = "pool_empty"
    PAYOUT_NOT_FOUND = "payout_not_found"
    PAYOUT_ALREADY_CREDITED = "payout_already_credited"
    PAYOUT_NOT_FAILED = "payout_not_failed"
    STALE_PAYOUT_MESSAGE = "stale_payout_message"
    AMOUNT_MISMATCH = "amount_mismatch"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    SERVER_SEED_MISMATCH = "server_seed_mismatch"


SUCCESS = frozenset({JackpotResult.CREATED, JackpotResult.OK})


# ---------------------------------------------------------------- commands

@dataclass(frozen=True, slots=True)
class CreatePool:
    """The admin's pool definition. Single-tier kinds give seed, cap, odds and drop range
    here; a multi_tier pool gives them per tier in ``tiers`` instead."""

    pool_id: str
    kind: str
    brand_ids: tuple[str, ...]
    region: str
    currency: str
    server_seed_hash: str
    seed_minor: int = 0
    cap_minor: int | None = None
    contribution_bps: int = 0
    tiers: tuple[TierConfig, ...] = ()
    drop_min_minor: int = 0
    drop_max_minor: int = 0
    deadline_ms: int = 0
    period_ms: int = 0
    odds_ppb: int = 0
    min_bet_minor: int = 1
    name: str = ""


@dataclass(frozen=True, slots=True)
class TierPatch:
    """Changes to one tier; None leaves a field as it is. Single-tier pools name MAIN_TIER."""

    name: str
    seed_minor: int | None = None  # applies from the next seeding
    cap_minor: int | None = None  # applies at once: a size above it moves to the reserve
    remove_cap: bool = False
    share_bps: int | None = None
    odds_ppb: int | None = None
    drop_min_minor: int | None = None  # the range applies from the next seeding
    drop_max_minor: int | None = None


@dataclass(frozen=True, slots=True)
class Reconfigure:
    """An audited change of a pool. Kind, currency and tier names never change."""

    brand_ids: tuple[str, ...] | None = None
    region: str | None = None
    contribution_bps: int | None = None
    tiers: tuple[TierPatch, ...] = ()
    deadline_ms: int | None = None  # timed pools: the next deadline
    period_ms: int | None = None
    min_bet_minor: int | None = None
    status: str | None = None  # open | closed
    server_seed_hash: str | None = None  # a new seed commitment; ctx.server_seed must be the new seed
    name: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Contribute:
    """A share of a round's bet for the pool. Without an explicit amount the contribution
    is bet * contribution_bps // 10000 (rounded down)."""

    contribution_id: str
    brand_id: str
    region: str  # "" for the pool's own region: then the brand alone decides isolation
    round_id: str
    player_id: str
    bet_minor: int
    currency: str
    contribution_minor: int | None = None
    contribution_currency: str = ""  # of the explicit amount; "" means the bet's currency
    # The game provider whose round settlement holds the stake, for contributions carried on
    # game rounds: the contributed part then moves from PROVIDER_SETTLEMENT into the brand's
    # JACKPOT_CONTRIBUTIONS clearing account in the same operation. "" for contributions
    # reported over HTTP, whose stake Bankroll did not settle.
    provider: str = ""


@dataclass(frozen=True, slots=True)
class CheckCandidate:
    """Would a round with this brand, region, currency and bet take part? Read-only."""

    brand_id: str
    region: str
    currency: str
    bet_minor: int = 0
    player_id: str = ""  # echoed only: eligibility never depends on who the player is


@dataclass(frozen=True, slots=True)
class Trigger:
    """A win decided outside the engine (a game's jackpot symbol, an operator)."""

    trigger_id: str
    player_id: str
    round_id: str
    brand_id: str
    region: str
    tier: str = ""  # "" for the only tier of a single-tier pool
    reason: str = "manual"
    # brand_id "" names a local pool's one brand; region "" the pool's region.


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passing: a due deadline drops a timed pool; unanswered payout requests are
    sent again and retryable failures retried. tick_id makes a redelivered tick a replay."""

    tick_id: str = ""


@dataclass(frozen=True, slots=True)
class PayoutCredited:
    """`jp.payout.credited` from the wallet agent."""

    trigger_id: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class PayoutFailed:
    """`jp.payout.failed` from the wallet agent: limits, RG/AML hold, sanctions, ..."""

    trigger_id: str
    attempt: int
    reason: str
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class RetryPayout:
    """An operator asks for a failed payout to be requested again (e.g. a hold lifted)."""

    trigger_id: str


Command = Union[
    CreatePool, Reconfigure, Contribute, CheckCandidate, Trigger, Tick, PayoutCredited, PayoutFailed, RetryPayout,
]


@dataclass(frozen=True, slots=True)
class Rules:
    """Payout saga timings; built from the settings, passed in."""

    payout_resend_ms: int = 30_000  # a request unanswered this long is sent again (same attempt)
    payout_retry_ms: int = 60_000  # a retryable failure is retried after this long (next attempt)
    max_payout_attempts: int = 5  # then only an operator's RetryPayout asks again
    # How long a credited win stays in the pool record: long enough for a late or
    # duplicated saga answer to find it, short enough that a pool dropping often keeps a
    # small record (the chain, the ledger and the trigger's operation record keep the rest).
    closed_win_retention_ms: int = 600_000


@dataclass(frozen=True, slots=True)
class Context:
    tenant_id: str
    now_ms: int
    # The pool's current server seed, from the agent's secret store; its SHA-256 must be
    # the pool's commitment. Needed by CreatePool, Reconfigure, Contribute, Trigger and Tick.
    server_seed: bytes = b""
    operation_key: str = ""  # for Reconfigure and RetryPayout only
    retention_ms: int = 72 * 3_600_000
    rules: Rules = field(default_factory=Rules)


# ---------------------------------------------------------------- events

@dataclass(frozen=True, slots=True)
class PoolCreated:
    config: PoolConfig
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class ConfigChanged:
    config: PoolConfig


@dataclass(frozen=True, slots=True)
class TierUpdated:
    tier: TierState


@dataclass(frozen=True, slots=True)
class WinUpdated:
    win: Win


@dataclass(frozen=True, slots=True)
class ParticipantCounted:
    participant: Participant


@dataclass(frozen=True, slots=True)
class ParticipantsCleared:
    pass


@dataclass(frozen=True, slots=True)
class DeadlineSet:
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class TotalsChanged:
    contributions_minor: int
    seeds_minor: int
    payouts_minor: int


@dataclass(frozen=True, slots=True)
class ChainAppended:
    entry: ChainEntry


@dataclass(frozen=True, slots=True)
class OperationRecorded:
    key: str
    record: OperationRecord
    prune_before_ms: int
    prune_wins_before_ms: int = 0  # credited wins closed before this go; 0: prune_before_ms


Event = Union[
    PoolCreated, ConfigChanged, TierUpdated, WinUpdated, ParticipantCounted, ParticipantsCleared, DeadlineSet,
    TotalsChanged, ChainAppended, OperationRecorded,
]


@dataclass(frozen=True, slots=True)
class Outcome:
    code: JackpotResult
    body: dict

    @property
    def ok(self) -> bool:
        return self.code in SUCCESS


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    events: tuple[Event, ...] = ()
    postings: tuple[Posting, ...] = ()
    audit: tuple[AuditRecord, ...] = ()  # audit chain entries, as records for the audit store
    payouts: tuple[PayoutRequest, ...] = ()  # `jp.payout.requested` messages for the wallet agent
    replayed: bool = False

    @property
    def chain(self) -> tuple[ChainEntry, ...]:
        return tuple(chain_entry_from_audit(record) for record in self.audit)


# ---------------------------------------------------------------- accounts

def _qualifier(config: PoolConfig, tier: str) -> str:
    return f"{config.pool_id}:{tier}" if config.kind == "multi_tier" else config.pool_id


def liability_account(config: PoolConfig, tier: str) -> str:
    """system:JACKPOT_LIABILITY:{pool_id}[:{tier}]:{CUR}: the tier's size. The tier is named
    for multi_tier pools only."""
    return system_account("JACKPOT_LIABILITY", config.currency, _qualifier(config, tier))


def reserve_account(config: PoolConfig, tier: str) -> str:
    """system:JACKPOT_LIABILITY:{pool_id}[:{tier}]:reserve:{CUR}: owed to the next seeds."""
    return system_account("JACKPOT_LIABILITY", config.currency, _qualifier(config, tier) + ":reserve")


def contribution_account(brand_id: str, currency: str) -> str:
    return system_account("JACKPOT_CONTRIBUTIONS", currency, brand_id)


def seed_account(currency: str) -> str:
    return system_account("ADJUSTMENTS", currency, "jackpot_seed")


def payout_account(currency: str) -> str:
    return system_account("PAYOUTS", currency, "jackpot")


# ---------------------------------------------------------------- configuration

def _is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _tier_problem(tier: TierConfig) -> str:
    if not isinstance(tier.name, str) or not _TIER.match(tier.name) or tier.name == "reserve":
        return f"tier name {tier.name!r} must be 1-32 of a-z, 0-9 and _ (and not 'reserve')"
    where = f"tier {tier.name}"
    if not _is_int(tier.seed_minor, 0, MAX_AMOUNT_MINOR):
        return f"{where}: seed must be a whole number of minor units, 0 or more"
    if tier.cap_minor is not None and not _is_int(tier.cap_minor, max(tier.seed_minor, 1), MAX_AMOUNT_MINOR):
        return f"{where}: cap must be at least the seed"
    if not _is_int(tier.share_bps, 0, BPS):
        return f"{where}: share must be 0..10000 bps"
    if not _is_int(tier.odds_ppb, 0, PPB):
        return f"{where}: odds must be 0..{PPB} ppb"
    if not (_is_int(tier.drop_min_minor, 0, MAX_AMOUNT_MINOR) and _is_int(tier.drop_max_minor, 0, MAX_AMOUNT_MINOR)):
        return f"{where}: drop range must be whole minor units"
    if tier.has_drop_range or tier.drop_min_minor:
        if not tier.seed_minor < tier.drop_min_minor <= tier.drop_max_minor:
            return f"{where}: drop range must satisfy seed < drop_min <= drop_max"
        if tier.cap_minor is not None and tier.drop_max_minor > tier.cap_minor:
            return f"{where}: drop_max must not exceed the cap"
    return ""


def validate_config(config: PoolConfig) -> str:
    """What is wrong with a pool configuration, in words; "" when nothing is."""
    if config.kind not in POOL_KINDS:
        return f"kind must be one of {', '.join(POOL_KINDS)}"
    if not isinstance(config.pool_id, str) or not _POOL_ID.match(config.pool_id):
        return "pool_id must be 1-64 of A-Z, a-z, 0-9, '.', '-'"
    brands = config.brand_ids
    if (not brands or len(set(brands)) != len(brands)
            or not all(isinstance(b, str) and _ID.match(b) for b in brands)):
        return "brand_ids must be one or more distinct ids"
    if not isinstance(config.region, str) or not _ID.match(config.region):
        return "region must be an id"
    if not isinstance(config.name, str) or len(config.name) > 80 or not config.name.isprintable():
        return "name must be at most 80 printable characters"
    if not is_currency(config.currency):
        return "currency must be an ISO 4217 code"
    if not _is_int(config.contribution_bps, 0, BPS):
        return "contribution_bps must be 0..10000"
    if not isinstance(config.server_seed_hash, str) or not _HEX64.match(config.server_seed_hash):
        return "server_seed_hash must be the lowercase hex SHA-256 of the server seed"
    if not _is_int(config.min_bet_minor, 1, MAX_AMOUNT_MINOR):
        return "min_bet must be at least 1 minor unit"
    if config.status not in (OPEN, CLOSED):
        return "status must be open or closed"
    if not (_is_int(config.deadline_ms, 0, 2**62) and _is_int(config.period_ms, 0, 2**62)):
        return "deadline and period must be whole milliseconds"
    tiers = config.tiers
    if not tiers:
        return "a pool needs a tier"
    for tier in tiers:
        problem = _tier_problem(tier)
        if problem:
            return problem
    if len({t.name for t in tiers}) != len(tiers):
        return "tier names must be distinct"
    if sum(t.share_bps for t in tiers) != BPS:
        return "tier shares must add up to 10000 bps"
    if config.kind == "multi_tier":
        if len(tiers) < 2:
            return "a multi_tier pool needs two or more tiers"
    elif len(tiers) != 1 or tiers[0].name != MAIN_TIER:
        return "only multi_tier pools have named tiers"
    timed = config.kind == "timed"
    if timed != bool(config.deadline_ms) or timed != bool(config.period_ms):
        return "timed pools, and only they, need a deadline and a period"
    main = tiers[0]
    if config.kind == "fixed" and (main.seed_minor < 1 or main.cap_minor != main.seed_minor):
        return "a fixed pool's prize is its seed (at least 1) and it does not grow past it"
    if config.kind in ("fixed", "progressive", "timed") and main.has_drop_range:
        return f"a {config.kind} pool has no drop range (use must_drop or a multi_tier tier)"
    if config.kind == "must_drop" and not main.has_drop_range:
        return "a must_drop pool needs drop_min and drop_max"
    if timed and main.odds_ppb:
        return "a timed pool drops only at its deadlines"
    return ""


def _config_from(cmd: CreatePool) -> PoolConfig | str:
    if cmd.kind == "multi_tier":
        if (cmd.seed_minor, cmd.cap_minor, cmd.odds_ppb, cmd.drop_min_minor, cmd.drop_max_minor) != (0, None, 0, 0, 0):
            return "a multi_tier pool sets seed, cap, odds and drop range per tier"
        tiers = tuple(cmd.tiers)
    else:
        if cmd.tiers:
            return "only multi_tier pools have tiers"
        # A fixed prize does not grow: the cap is the seed; contributions go to the reserve.
        cap = cmd.seed_minor if cmd.kind == "fixed" and cmd.cap_minor is None else cmd.cap_minor
        tiers = (TierConfig(MAIN_TIER, cmd.seed_minor, cap, BPS, cmd.odds_ppb, cmd.drop_min_minor,
                            cmd.drop_max_minor),)
    brands = tuple(cmd.brand_ids) if isinstance(cmd.brand_ids, (tuple, list)) else ()
    return PoolConfig(cmd.pool_id, cmd.kind, brands, cmd.region, cmd.currency, cmd.contribution_bps, tiers,
                      cmd.server_seed_hash, cmd.deadline_ms, cmd.period_ms, cmd.min_bet_minor, OPEN, cmd.name)


def split_contribution(amount_minor: int, tiers: Iterable[TierConfig]) -> dict[str, int]:
    """Each tier's part: amount * share_bps // 10000, rounded down; what rounding leaves
    over goes to the first tier listed, so the parts always add up to the amount."""
    tiers = tuple(tiers)
    parts = {t.name: amount_minor * t.share_bps // BPS for t in tiers}
    parts[tiers[0].name] += amount_minor - sum(parts.values())
    return parts


def config_dict(config: PoolConfig) -> dict:
    """The configuration as plain JSON, as written to the audit chain."""
    return {
        "pool_id": config.pool_id, "kind": config.kind, "brand_ids": list(config.brand_ids),
        "region": config.region, "currency": config.currency, "contribution_bps": config.contribution_bps,
        "server_seed_hash": config.server_seed_hash, "deadline_ms": config.deadline_ms,
        "period_ms": config.period_ms, "min_bet": config.min_bet_minor, "status": config.status,
        "name": config.name,
        "tiers": [
            {"name": t.name, "seed": t.seed_minor, "cap": t.cap_minor, "share_bps": t.share_bps,
             "odds_ppb": t.odds_ppb, "drop_min": t.drop_min_minor, "drop_max": t.drop_max_minor}
            for t in config.tiers
        ],
    }


def request_hash(command: object) -> str:
    """Hash of a command's content, canonical and versioned (app.domain.idempotency): the
    same request always hashes the same, and a field added later with a default keeps
    the hash of every request made before."""
    return idempotency.request_hash(idempotency.meaning_of(command))


def legacy_request_hash(command: object) -> str:
    """The hash stored before hashes were versioned: the repr of the command's fields."""
    body = repr((type(command).__name__, dataclasses.astuple(command)))
    return hashlib.sha256(body.encode()).hexdigest()


def same_request(stored: str, command: object, current: str) -> bool:
    if stored.startswith(f"{idempotency.VERSION}:"):
        return stored == current
    return stored == legacy_request_hash(command)


def operation_key(command: object, ctx: Context) -> str:
    if isinstance(command, CreatePool):
        return "create"
    if isinstance(command, Contribute):
        return f"contribution:{command.contribution_id}"
    if isinstance(command, Trigger):
        return f"trigger:{command.trigger_id}"
    if isinstance(command, Tick):
        return f"tick:{command.tick_id}" if command.tick_id else ""
    if isinstance(command, (Reconfigure, RetryPayout)):
        return ctx.operation_key
    return ""


# ---------------------------------------------------------------- audit records

def chain_audit_record(tenant_id: str, pool_id: str, entry: ChainEntry, at_ms: int) -> AuditRecord:
    """A chain entry as an audit record: unique per (tenant, audit_id), so a re-emitted
    entry is stored once. player_id is empty: the chain belongs to the pool."""
    return AuditRecord(tenant_id, f"jp:{pool_id}:chain:{entry.seq}", "", "jp_chain", entry.kind, at_ms,
                       {"pool_id": pool_id, **entry.to_dict()})


def chain_entry_from_audit(record: AuditRecord) -> ChainEntry:
    return ChainEntry.from_dict(record.detail)


# ---------------------------------------------------------------- decision builder

def _reject(code: JackpotResult, message: str) -> Decision:
    return Decision(Outcome(code, {"error": {"code": str(code), "message": message}}))


def already_applied() -> Decision:
    """The decision for a command whose postings' operation ids the ledger holds already
    (told by the agent): it was applied before and its answer is no longer kept."""
    return _reject(JackpotResult.OPERATION_ALREADY_APPLIED,
                   "this operation was applied before and its answer is no longer kept")


def _seed_problem(ctx: Context, commitment: str) -> Decision | None:
    """Draws keyed by any other seed could not be verified later, so none are made."""
    if seed_commitment(ctx.server_seed) != commitment:
        return _reject(JackpotResult.SERVER_SEED_MISMATCH, "the server seed does not match the pool's commitment")
    return None


class _Draft:
    """One decision in progress: the tiers, wins and chain head as they stand so far, the
    ledger legs, chain entries and payout requests made on the way."""

    def __init__(self, state: PoolState, ctx: Context, config: PoolConfig | None = None) -> None:
        self.state, self.ctx = state, ctx
        self.config: PoolConfig = config or state.config  # type: ignore[assignment]
        self.tiers = dict(state.tiers)
        self.changed: dict[str, None] = {}  # tier names, in order of first change
        self.wins: dict[str, Win] = {}
        self.ordered: list[Event] = []  # config, participant and deadline events, as they happen
        self.contributions = self.seeds = self.paid = 0
        self.legs: list[tuple[str, str, str, int, str, str, str]] = []
        self.head = ChainHead(state.chain_seq, state.chain_hash)
        self.entries: list[ChainEntry] = []
        self.payouts: list[PayoutRequest] = []

    # state as it stands inside the decision
    def put_tier(self, tier: TierState) -> None:
        self.tiers[tier.name] = tier
        self.changed[tier.name] = None

    def win(self, trigger_id: str) -> Win | None:
        return self.wins.get(trigger_id) or self.state.wins.get(trigger_id)

    def put_win(self, win: Win) -> None:
        self.wins[win.trigger_id] = win

    def chain(self, kind: str, **payload: object) -> ChainEntry:
        entry = make_entry(self.head, kind, {"pool_id": self.config.pool_id, "at_ms": self.ctx.now_ms, **payload})
        self.entries.append(entry)
        self.head = ChainHead(entry.seq + 1, entry.hash)
        return entry

    def leg(self, operation_id: str, debit: str, credit: str, amount: int, category: str, reason: str = "",
            player_id: str = "") -> None:
        if amount:
            self.legs.append((operation_id, debit, credit, amount, category, reason, player_id))

    def request(self, win: Win) -> None:
        self.payouts.append(PayoutRequest(
            self.ctx.tenant_id, self.config.pool_id, win.tier, win.trigger_id,
            payout_key(self.config.pool_id, win.trigger_id), win.player_id, win.round_id, win.brand_id, win.region,
            win.amount_minor, self.config.currency, win.attempt, win.reason, self.ctx.now_ms,
        ))

    # money movements
    def contribute(self, name: str, part: int, operation_id: str, reason: str, brand_id: str,
                   player_id: str) -> tuple[int, int]:
        """Add part to a tier up to its limit (the armed drop point, else the cap); the rest
        goes to the tier's reserve. Returns (to the pool, to the reserve)."""
        tier, cfg = self.tiers[name], self.config.tier(name)
        limit = tier.drop_point_minor or (cfg.cap_minor if cfg else None)
        to_pool = part if limit is None else max(0, min(part, limit - tier.size_minor))
        to_reserve = part - to_pool
        source = contribution_account(brand_id, self.config.currency)
        self.leg(operation_id, source, liability_account(self.config, name), to_pool, "jp_contribution", reason,
                 player_id)
        self.leg(operation_id, source, reserve_account(self.config, name), to_reserve, "jp_contribution_reserve",
                 reason, player_id)
        self.put_tier(dataclasses.replace(tier, size_minor=tier.size_minor + to_pool,
                                          reserve_minor=tier.reserve_minor + to_reserve))
        self.contributions += part
        return to_pool, to_reserve

    def seed(self, name: str, cycle: int) -> None:
        """Seed a tier (it is empty): from its reserve first, the operator pays the rest.
        A tier with a drop range gets a new hidden point and publishes its commitment."""
        tier, cfg = self.tiers[name], self.config.tier(name)
        if cfg is None or tier.size_minor:
            raise InvariantViolation(f"tier {name} seeded while holding {tier.size_minor}")
        from_reserve = min(tier.reserve_minor, cfg.seed_minor)
        from_operator = cfg.seed_minor - from_reserve
        operation_id = f"jp:{self.config.pool_id}:seed:{name}:{cycle}"
        liability = liability_account(self.config, name)
        self.leg(operation_id, reserve_account(self.config, name), liability, from_reserve, "jp_seed_reserve",
                 f"seed of {name} cycle {cycle} from the reserve")
        self.leg(operation_id, seed_account(self.config.currency), liability, from_operator, "jp_seed",
                 f"seed of {name} cycle {cycle} funded by the operator")
        self.seeds += from_operator
        tier = dataclasses.replace(tier, size_minor=cfg.seed_minor, reserve_minor=tier.reserve_minor - from_reserve,
                                   cycle=cycle, drop_point_minor=0, drop_nonce="", drop_commitment="")
        self.chain("seed", tier=name, cycle=cycle, seed_minor=cfg.seed_minor, from_reserve_minor=from_reserve,
                   from_operator_minor=from_operator)
        if cfg.has_drop_range:
            point, nonce = drop_point(self.ctx.server_seed, self.config.pool_id, name, cycle, cfg.drop_min_minor,
                                      cfg.drop_max_minor)
            commitment = commit_point(point, nonce)
            tier = dataclasses.replace(tier, drop_point_minor=point, drop_nonce=nonce, drop_commitment=commitment)
            self.chain("drop_commitment", tier=name, cycle=cycle, commitment=commitment,
                       drop_min_minor=cfg.drop_min_minor, drop_max_minor=cfg.drop_max_minor)
        self.put_tier(tier)

    def drop(self, name: str, trigger_id: str, player_id: str, round_id: str, brand_id: str, region: str,
             reason: str) -> Win | None:
        """The tier pays its whole size to the winner and is reseeded; None when it is empty."""
        tier = self.tiers[name]
        amount = tier.size_minor
        if amount <= 0:
            return None
        now = self.ctx.now_ms
        self.leg(f"jp:{self.config.pool_id}:drop:{trigger_id}", liability_account(self.config, name),
                 payout_account(self.config.currency), amount, "jp_payout",
                 f"trigger {trigger_id} tier {name} ({reason}) round {round_id}", player_id)
        self.paid += amount
        win = Win(trigger_id, name, amount, player_id, round_id, brand_id, region, reason, PAYOUT_REQUESTED, 1, now,
                  now)
        self.put_win(win)
        self.request(win)
        self.chain("drop", trigger_id=trigger_id, tier=name, cycle=tier.cycle, amount_minor=amount, reason=reason,
                   player_id=player_id, round_id=round_id, brand_id=brand_id, region=region,
                   payout_key=payout_key(self.config.pool_id, trigger_id))
        if tier.drop_point_minor:
            self.chain("drop_reveal", tier=name, cycle=tier.cycle, point_minor=tier.drop_point_minor,
                       nonce=tier.drop_nonce, commitment=tier.drop_commitment, trigger_id=trigger_id)
        self.put_tier(dataclasses.replace(tier, size_minor=0, last_win=LastWin(trigger_id, player_id, amount, now)))
        self.seed(name, tier.cycle + 1)
        return win

    # the result
    def events(self) -> tuple[Event, ...]:
        events: list[Event] = list(self.ordered)
        events += [TierUpdated(self.tiers[name]) for name in self.changed]
        events += [WinUpdated(win) for win in self.wins.values()]
        if self.contributions or self.seeds or self.paid:
            events.append(TotalsChanged(self.contributions, self.seeds, self.paid))
        events += [ChainAppended(entry) for entry in self.entries]
        return tuple(events)

    def postings(self) -> tuple[Posting, ...]:
        legs: dict[str, int] = {}
        out = []
        for operation_id, debit, credit, amount, category, reason, player_id in self.legs:
            leg = legs.get(operation_id, 0)
            legs[operation_id] = leg + 1
            out.append(Posting(self.ctx.tenant_id, operation_id, leg, debit, credit, amount, self.config.currency,
                               category, self.ctx.now_ms, reason, player_id))
        return tuple(out)

    def decision(self, code: JackpotResult, body: dict) -> Decision:
        audit = tuple(chain_audit_record(self.ctx.tenant_id, self.config.pool_id, e, self.ctx.now_ms)
                      for e in self.entries)
        return Decision(Outcome(code, body), self.events(), self.postings(), audit, tuple(self.payouts))


def _win_body(win: Win, pool_id: str) -> dict:
    return {"trigger_id": win.trigger_id, "tier": win.tier, "amount": win.amount_minor,
            "payout_key": payout_key(pool_id, win.trigger_id), "state": win.state}


def _isolation(config: PoolConfig, brand_id: str, region: str) -> Decision | None:
    """A pool takes part only in rounds of its own brands and licence (region)."""
    if brand_id not in config.brand_ids:
        return _reject(JackpotResult.BRAND_NOT_IN_POOL, f"brand {brand_id!r} does not take part in this pool")
    if region != config.region:
        return _reject(JackpotResult.REGION_NOT_IN_POOL, f"the pool belongs to region {config.region!r}")
    return None


# ---------------------------------------------------------------- decide

def decide(state: PoolState, command: Command, ctx: Context) -> Decision:
    handler = _HANDLERS.get(type(command))
    if handler is None:
        raise InvariantViolation(f"unknown jackpot command {type(command).__name__}")
    key = operation_key(command, ctx)
    request = request_hash(command)
    recorded = state.operations.get(key) if key else None
    if recorded is not None:
        if not same_request(recorded.request_hash, command, request):
            if isinstance(command, CreatePool):
                return _reject(JackpotResult.POOL_EXISTS, "a pool with this id exists with another configuration")
            return _reject(JackpotResult.IDEMPOTENCY_CONFLICT, "this id was already used with a different request")
        return Decision(Outcome(JackpotResult(recorded.code), recorded.body), (), recorded.postings, recorded.audit,
                        recorded.payouts, replayed=True)
    if isinstance(command, CreatePool):
        if command.pool_id != state.pool_id:
            raise InvariantViolation(f"CreatePool for {command.pool_id!r} sent to the record of {state.pool_id!r}")
        if state.exists:
            return _reject(JackpotResult.POOL_EXISTS, "a pool with this id exists")
    elif not state.exists:
        return _reject(JackpotResult.POOL_NOT_FOUND, "no such pool")
    decision = handler(state, command, ctx)
    check_postings(decision.postings)
    # A tick that did nothing is not recorded: timers fire often and would crowd the record.
    if not decision.outcome.ok or not key or (isinstance(command, Tick) and not decision.events):
        return decision
    record = OperationRecord(request, str(decision.outcome.code), decision.outcome.body, ctx.now_ms,
                             decision.postings, decision.payouts, decision.audit)
    return dataclasses.replace(
        decision, events=decision.events + (OperationRecorded(
            key, record, ctx.now_ms - ctx.retention_ms, ctx.now_ms - ctx.rules.closed_win_retention_ms),),
    )


def _create_pool(state: PoolState, cmd: CreatePool, ctx: Context) -> Decision:
    config = _config_from(cmd)
    problem = config if isinstance(config, str) else validate_config(config)
    if problem:
        return _reject(JackpotResult.INVALID_CONFIG, problem)
    refused = _seed_problem(ctx, config.server_seed_hash)
    if refused:
        return refused
    draft = _Draft(state, ctx, config)
    draft.ordered.append(PoolCreated(config, config.deadline_ms))
    draft.tiers = {t.name: TierState(t.name) for t in config.tiers}
    draft.chain("pool_created", config=config_dict(config))
    for tier in config.tiers:
        draft.seed(tier.name, 0)
    body = {"pool_id": config.pool_id, "kind": config.kind, "network": config.network,
            "sizes": {name: t.size_minor for name, t in draft.tiers.items()}}
    return draft.decision(JackpotResult.CREATED, body)


def _reconfigure(state: PoolState, cmd: Reconfigure, ctx: Context) -> Decision:
    old = state.config
    tiers = {t.name: t for t in old.tiers}
    for patch in cmd.tiers:
        tier = tiers.get(patch.name)
        if tier is None:
            return _reject(JackpotResult.TIER_NOT_FOUND, f"the pool has no tier {patch.name!r}")
        changes = {k: getattr(patch, k) for k in ("seed_minor", "cap_minor", "share_bps", "odds_ppb",
                                                   "drop_min_minor", "drop_max_minor")
                   if getattr(patch, k) is not None}
        if patch.remove_cap:
            changes["cap_minor"] = None
        tiers[patch.name] = dataclasses.replace(tier, **changes)
    updates = {k: getattr(cmd, k) for k in ("region", "contribution_bps", "deadline_ms", "period_ms",
                                             "min_bet_minor", "status", "server_seed_hash", "name")
               if getattr(cmd, k) is not None}
    if cmd.brand_ids is not None:
        updates["brand_ids"] = tuple(cmd.brand_ids)
    new = dataclasses.replace(old, tiers=tuple(tiers[t.name] for t in old.tiers), **updates)
    problem = validate_config(new)
    if problem:
        return _reject(JackpotResult.INVALID_CONFIG, problem)
    for tier in new.tiers:
        point = state.tiers[tier.name].drop_point_minor
        if point and tier.cap_minor is not None and tier.cap_minor < point:
            return _reject(JackpotResult.INVALID_CONFIG,
                           f"tier {tier.name}: the cap cannot go below the committed drop point")
    refused = _seed_problem(ctx, new.server_seed_hash)
    if refused:
        return refused
    body = {"pool_id": new.pool_id, "config": config_dict(new)}
    if new == old:
        return Decision(Outcome(JackpotResult.OK, body))
    draft = _Draft(state, ctx, new)
    draft.ordered.append(ConfigChanged(new))
    entry = draft.chain("config_changed", before=config_dict(old), after=config_dict(new), reason=cmd.reason)
    if new.server_seed_hash != old.server_seed_hash:
        draft.chain("seed_commitment", server_seed_hash=new.server_seed_hash)
    for tier in new.tiers:
        current = draft.tiers[tier.name]
        if tier.cap_minor is not None and current.size_minor > tier.cap_minor:
            excess = current.size_minor - tier.cap_minor
            draft.leg(f"jp:{new.pool_id}:config:{entry.seq}", liability_account(new, tier.name),
                      reserve_account(new, tier.name), excess, "jp_cap_reserve", f"cap of {tier.name} lowered")
            draft.put_tier(dataclasses.replace(current, size_minor=tier.cap_minor,
                                               reserve_minor=current.reserve_minor + excess))
    if cmd.deadline_ms is not None and cmd.deadline_ms != state.deadline_ms:
        draft.ordered.append(DeadlineSet(cmd.deadline_ms))
    return draft.decision(JackpotResult.OK, body)


def _contribute(state: PoolState, cmd: Contribute, ctx: Context) -> Decision:
    config = state.config
    cmd = dataclasses.replace(cmd, region=cmd.region or config.region)
    if config.status != OPEN:
        return _reject(JackpotResult.POOL_CLOSED, "the pool is closed")
    refused = _isolation(config, cmd.brand_id, cmd.region)
    if refused:
        return refused
    if cmd.currency != config.currency or (cmd.contribution_currency or cmd.currency) != config.currency:
        return _reject(JackpotResult.CURRENCY_MISMATCH, f"the pool is in {config.currency}")
    if not (cmd.contribution_id and cmd.round_id and cmd.player_id) or not is_amount_minor(cmd.bet_minor):
        return _reject(JackpotResult.INVALID_CONTRIBUTION,
                       "a contribution needs an id, a round, a player and a positive bet in minor units")
    explicit = cmd.contribution_minor
    if explicit is not None and not (is_amount_minor(explicit) and explicit <= cmd.bet_minor):
        return _reject(JackpotResult.INVALID_CONTRIBUTION, "an explicit contribution must be 1 minor unit up to the bet")
    if cmd.bet_minor < config.min_bet_minor:
        return _reject(JackpotResult.BET_BELOW_MINIMUM, f"bets below {config.min_bet_minor} do not take part")
    refused = _seed_problem(ctx, config.server_seed_hash)
    if refused:
        return refused
    amount = explicit if explicit is not None else cmd.bet_minor * config.contribution_bps // BPS
    draft = _Draft(state, ctx)
    # A round after a timed pool's deadline belongs to the next period, even when the timer's
    # tick has not arrived yet: the due drop is made first, among the period's own entries.
    period_closed = _deadline_due(state, ctx.now_ms)
    wins = _deadline_drop(state, draft, ctx) if period_closed else []
    operation_id = f"jp:{config.pool_id}:contribution:{cmd.contribution_id}"
    reason = f"contribution {cmd.contribution_id} round {cmd.round_id} brand {cmd.brand_id} region {cmd.region}"
    to_pool: dict[str, int] = {}
    to_reserve = 0
    if cmd.provider:
        draft.leg(operation_id, system_account("PROVIDER_SETTLEMENT", config.currency, cmd.provider),
                  contribution_account(cmd.brand_id, config.currency), amount, "jp_contribution_funding", reason,
                  cmd.player_id)
    for name, part in split_contribution(amount, config.tiers).items():
        to_pool[name], reserved = draft.contribute(name, part, operation_id, reason, cmd.brand_id, cmd.player_id)
        to_reserve += reserved
    if config.kind == "timed":
        before = None if period_closed else state.participants.get(cmd.player_id)
        draft.ordered.append(ParticipantCounted(Participant(
            cmd.player_id, (before.entries if before else 0) + 1, cmd.brand_id, cmd.region, cmd.round_id)))
    for tier in config.tiers:
        current = draft.tiers[tier.name]
        if current.drop_point_minor and current.size_minor >= current.drop_point_minor:
            # One must-drop win per seeding, so the id names the cycle, not the round.
            trigger_id, why = f"{ENGINE_TRIGGER_PREFIX}{tier.name}-drop-{current.cycle}", "must_drop"
        elif tier.odds_ppb and round_wins(ctx.server_seed, config.pool_id, cmd.round_id, tier.name, tier.odds_ppb):
            # One draw per round and tier: a second contribution from the same round draws
            # the same number, and the existing trigger id keeps it from winning twice.
            trigger_id, why = f"{ENGINE_TRIGGER_PREFIX}{tier.name}-round-{cmd.round_id}", "probabilistic"
        else:
            continue
        if draft.win(trigger_id) is None:
            win = draft.drop(tier.name, trigger_id, cmd.player_id, cmd.round_id, cmd.brand_id, cmd.region, why)
            if win is not None:
                wins.append(_win_body(win, config.pool_id))
    body = {"contribution_id": cmd.contribution_id, "pool_id": config.pool_id, "round_id": cmd.round_id,
            "player_id": cmd.player_id, "brand_id": cmd.brand_id, "region": cmd.region, "provider": cmd.provider,
            "currency": config.currency, "amount": amount, "tiers": to_pool, "reserve": to_reserve,
            "sizes": {name: t.size_minor for name, t in draft.tiers.items()}, "wins": wins}
    return draft.decision(JackpotResult.OK, body)


def _check_candidate(state: PoolState, cmd: CheckCandidate, ctx: Context) -> Decision:
    config = state.config
    cmd = dataclasses.replace(cmd, region=cmd.region or config.region)
    reason = ""
    if config.status != OPEN:
        reason = JackpotResult.POOL_CLOSED
    elif cmd.brand_id not in config.brand_ids:
        reason = JackpotResult.BRAND_NOT_IN_POOL
    elif cmd.region != config.region:
        reason = JackpotResult.REGION_NOT_IN_POOL
    elif cmd.currency != config.currency:
        reason = JackpotResult.CURRENCY_MISMATCH
    elif cmd.bet_minor and cmd.bet_minor < config.min_bet_minor:
        reason = JackpotResult.BET_BELOW_MINIMUM
    body = {
        "pool_id": config.pool_id, "eligible": not reason, "reason": str(reason) if reason else None,
        "odds": {t.name: ppb_to_text(t.odds_ppb) for t in config.tiers},
        "odds_ppb": {t.name: t.odds_ppb for t in config.tiers},
        "rules": {"kind": config.kind, "currency": config.currency, "brand_ids": list(config.brand_ids),
                  "region": config.region, "contribution_bps": config.contribution_bps,
                  "min_bet": config.min_bet_minor,
                  "must_drop": {t.name: [t.drop_min_minor, t.drop_max_minor] for t in config.tiers
                                if t.has_drop_range},
                  "deadline_ms": state.deadline_ms if config.kind == "timed" else None},
    }
    return Decision(Outcome(JackpotResult.OK, body))


def _trigger(state: PoolState, cmd: Trigger, ctx: Context) -> Decision:
    config = state.config
    # A local pool's winner can only be of its one brand; a network pool must be told.
    cmd = dataclasses.replace(cmd, region=cmd.region or config.region,
                              brand_id=cmd.brand_id or (config.brand_ids[0] if not config.network else ""))
    if config.status != OPEN:
        return _reject(JackpotResult.POOL_CLOSED, "the pool is closed")
    if not cmd.trigger_id or cmd.trigger_id.startswith(ENGINE_TRIGGER_PREFIX) or not cmd.player_id:
        return _reject(JackpotResult.INVALID_TRIGGER,
                       f"a trigger needs an id (not starting {ENGINE_TRIGGER_PREFIX!r}) and a player")
    name = cmd.tier or (config.tiers[0].name if len(config.tiers) == 1 else "")
    tier = config.tier(name)
    if tier is None:
        return _reject(JackpotResult.TIER_NOT_FOUND, f"the pool has no tier {cmd.tier!r}")
    if config.kind == "timed" or tier.has_drop_range or state.tiers[name].drop_point_minor:
        # The committed drop point (or the deadline draw) decides these; an outside
        # trigger would make the published commitment meaningless.
        return _reject(JackpotResult.TRIGGER_NOT_ALLOWED, "this tier drops only inside the engine")
    refused = _isolation(config, cmd.brand_id, cmd.region)
    if refused:
        return refused
    if cmd.trigger_id in state.wins:
        return _reject(JackpotResult.TRIGGER_EXISTS, "a win with this trigger id exists")
    if state.tiers[name].size_minor <= 0:
        return _reject(JackpotResult.POOL_EMPTY, "the tier holds nothing to pay")
    refused = _seed_problem(ctx, config.server_seed_hash)
    if refused:
        return refused
    draft = _Draft(state, ctx)
    win = draft.drop(name, cmd.trigger_id, cmd.player_id, cmd.round_id, cmd.brand_id, cmd.region,
                     f"manual:{cmd.reason}")
    if win is None:
        raise InvariantViolation("a non-empty tier did not drop")
    return draft.decision(JackpotResult.CREATED, {"pool_id": config.pool_id, **_win_body(win, config.pool_id)})


def _deadline_due(state: PoolState, now_ms: int) -> bool:
    config = state.config
    return config.kind == "timed" and config.status == OPEN and 0 < state.deadline_ms <= now_ms


def _deadline_drop(state: PoolState, draft: _Draft, ctx: Context) -> list[dict]:
    """A timed pool's due deadline: the period's entries draw the winner (or the pool rolls
    over to the next deadline when nobody took part); the period's entries are cleared."""
    config, now = state.config, ctx.now_ms
    deadline, period = state.deadline_ms, config.period_ms
    following = deadline + period * ((now - deadline) // period + 1)
    entries = sum(p.entries for p in state.participants.values())
    dropped = []
    if entries and draft.tiers[MAIN_TIER].size_minor > 0:
        # Each contribution in the period is one entry; players in a fixed order.
        index = deadline_winner_index(ctx.server_seed, config.pool_id, MAIN_TIER, deadline, entries)
        for participant in sorted(state.participants.values(), key=lambda p: p.player_id):
            if index < participant.entries:
                break
            index -= participant.entries
        win = draft.drop(MAIN_TIER, f"{ENGINE_TRIGGER_PREFIX}{MAIN_TIER}-deadline-{deadline}",
                         participant.player_id, participant.round_id, participant.brand_id, participant.region,
                         "deadline")
        if win is not None:
            dropped.append(_win_body(win, config.pool_id))
    else:
        draft.chain("deadline_rollover", tier=MAIN_TIER, deadline_ms=deadline, next_deadline_ms=following,
                    participants=len(state.participants), size_minor=draft.tiers[MAIN_TIER].size_minor)
    if state.participants:
        draft.ordered.append(ParticipantsCleared())
    draft.ordered.append(DeadlineSet(following))
    return dropped


def _tick(state: PoolState, cmd: Tick, ctx: Context) -> Decision:
    config, now, rules = state.config, ctx.now_ms, ctx.rules
    draft = _Draft(state, ctx)
    dropped, resent, retried = [], [], []
    if _deadline_due(state, now):
        refused = _seed_problem(ctx, config.server_seed_hash)
        if refused:
            return refused
        dropped = _deadline_drop(state, draft, ctx)
    for win in sorted(state.wins.values(), key=lambda w: w.trigger_id):
        if win.state == PAYOUT_REQUESTED and win.changed_at_ms + rules.payout_resend_ms <= now:
            # Unanswered: ask again under the same attempt; the wallet credits the key once.
            again = dataclasses.replace(win, changed_at_ms=now)
            resent.append(win.trigger_id)
        elif (win.state == FAILED and win.retryable and win.attempt < rules.max_payout_attempts
              and win.changed_at_ms + rules.payout_retry_ms <= now):
            again = dataclasses.replace(win, state=PAYOUT_REQUESTED, attempt=win.attempt + 1, changed_at_ms=now)
            retried.append(win.trigger_id)
        else:
            continue
        draft.put_win(again)
        draft.request(again)
    body = {"pool_id": config.pool_id, "dropped": dropped, "resent": resent, "retried": retried}
    return draft.decision(JackpotResult.OK, body)


def _payout_credited(state: PoolState, cmd: PayoutCredited, ctx: Context) -> Decision:
    win = state.wins.get(cmd.trigger_id)
    if win is None:
        return _reject(JackpotResult.PAYOUT_NOT_FOUND, "no payout for this trigger")
    if cmd.amount_minor != win.amount_minor:
        return _reject(JackpotResult.AMOUNT_MISMATCH, f"the win is {win.amount_minor}, not {cmd.amount_minor}")
    body = {"pool_id": state.pool_id, **_win_body(win, state.pool_id), "state": CREDITED}
    if win.state == CREDITED:
        return Decision(Outcome(JackpotResult.OK, {**body, "changed": False}))
    credited = dataclasses.replace(win, state=CREDITED, changed_at_ms=ctx.now_ms, closed_at_ms=ctx.now_ms,
                                   fail_reason="", retryable=False)
    return Decision(Outcome(JackpotResult.OK, {**body, "changed": True}), (WinUpdated(credited),))


def _payout_failed(state: PoolState, cmd: PayoutFailed, ctx: Context) -> Decision:
    win = state.wins.get(cmd.trigger_id)
    if win is None:
        return _reject(JackpotResult.PAYOUT_NOT_FOUND, "no payout for this trigger")
    if win.state == CREDITED:
        return _reject(JackpotResult.PAYOUT_ALREADY_CREDITED, "the payout was credited; a late failure changes nothing")
    if cmd.attempt != win.attempt:
        return _reject(JackpotResult.STALE_PAYOUT_MESSAGE,
                       f"the failure is for attempt {cmd.attempt}; attempt {win.attempt} is current")
    body = {"pool_id": state.pool_id, **_win_body(win, state.pool_id), "state": FAILED, "attempt": win.attempt}
    if win.state == FAILED:
        return Decision(Outcome(JackpotResult.OK, {**body, "changed": False}))
    failed = dataclasses.replace(win, state=FAILED, changed_at_ms=ctx.now_ms, fail_reason=cmd.reason,
                                 retryable=cmd.retryable)
    return Decision(Outcome(JackpotResult.OK, {**body, "changed": True}), (WinUpdated(failed),))


def _retry_payout(state: PoolState, cmd: RetryPayout, ctx: Context) -> Decision:
    win = state.wins.get(cmd.trigger_id)
    if win is None:
        return _reject(JackpotResult.PAYOUT_NOT_FOUND, "no payout for this trigger")
    if win.state == CREDITED:
        return _reject(JackpotResult.PAYOUT_ALREADY_CREDITED, "the payout was credited")
    if win.state != FAILED:
        return _reject(JackpotResult.PAYOUT_NOT_FAILED, "the payout is still waiting for the wallet")
    draft = _Draft(state, ctx)
    again = dataclasses.replace(win, state=PAYOUT_REQUESTED, attempt=win.attempt + 1, changed_at_ms=ctx.now_ms)
    draft.put_win(again)
    draft.request(again)
    draft.chain("payout_retry", trigger_id=win.trigger_id, attempt=again.attempt, after_failure=win.fail_reason)
    return draft.decision(JackpotResult.OK, {"pool_id": state.pool_id, **_win_body(again, state.pool_id),
                                             "attempt": again.attempt})


_HANDLERS: dict[type, Callable[[PoolState, object, Context], Decision]] = {
    CreatePool: _create_pool, Reconfigure: _reconfigure, Contribute: _contribute, CheckCandidate: _check_candidate,
    Trigger: _trigger, Tick: _tick, PayoutCredited: _payout_credited, PayoutFailed: _payout_failed,
    RetryPayout: _retry_payout,
}


# ---------------------------------------------------------------- evolve

def evolve(state: PoolState, events: tuple[Event, ...]) -> PoolState:
    if not events:
        return state
    config, deadline_ms, totals = state.config, state.deadline_ms, state.totals
    tiers, participants, wins, operations = dict(state.tiers), dict(state.participants), dict(state.wins), \
        state.operations
    chain_seq, chain_hash = state.chain_seq, state.chain_hash
    for event in events:
        if isinstance(event, PoolCreated):
            if config is not None:
                raise InvariantViolation(f"pool {state.pool_id} created twice")
            config, deadline_ms = event.config, event.deadline_ms
        elif isinstance(event, ConfigChanged):
            config = event.config
        elif isinstance(event, TierUpdated):
            tiers[event.tier.name] = event.tier
        elif isinstance(event, WinUpdated):
            wins[event.win.trigger_id] = event.win
        elif isinstance(event, ParticipantCounted):
            participants[event.participant.player_id] = event.participant
        elif isinstance(event, ParticipantsCleared):
            participants = {}
        elif isinstance(event, DeadlineSet):
            deadline_ms = event.deadline_ms
        elif isinstance(event, TotalsChanged):
            totals = Totals(totals.contributions_minor + event.contributions_minor,
                            totals.seeds_minor + event.seeds_minor, totals.payouts_minor + event.payouts_minor)
        elif isinstance(event, ChainAppended):
            entry = event.entry
            if (entry.seq, entry.prev_hash) != (chain_seq, chain_hash):
                raise InvariantViolation(f"chain entry {entry.seq} does not follow the head {chain_seq}")
            chain_seq, chain_hash = entry.seq + 1, entry.hash
        elif isinstance(event, OperationRecorded):
            cutoff = event.prune_before_ms
            # Operation ids older than the retention period and credited wins older than
            # theirs are dropped; a failed or unanswered payout stays until it is credited.
            operations = {k: v for k, v in operations.items() if v.at_ms >= cutoff}
            operations[event.key] = event.record
            wins_cutoff = event.prune_wins_before_ms or cutoff
            for trigger_id in [k for k, w in wins.items() if 0 < w.closed_at_ms < wins_cutoff]:
                del wins[trigger_id]
        else:
            raise InvariantViolation(f"unknown jackpot event {type(event).__name__}")
    new_state = dataclasses.replace(
        state, config=config, tiers=tiers, deadline_ms=deadline_ms, participants=participants, wins=wins,
        totals=totals, chain_seq=chain_seq, chain_hash=chain_hash, operations=operations,
        version=state.version + 1,
    )
    check_pool(new_state)
    return new_state


# ---------------------------------------------------------------- invariants

@dataclass(frozen=True, slots=True)
class Conservation:
    contributions_minor: int
    seeds_minor: int
    pools_minor: int  # sizes and reserves of every tier
    payouts_minor: int

    @property
    def balanced(self) -> bool:
        return self.contributions_minor + self.seeds_minor == self.pools_minor + self.payouts_minor


def conservation(state: PoolState) -> Conservation:
    pools = sum(t.size_minor + t.reserve_minor for t in state.tiers.values())
    return Conservation(state.totals.contributions_minor, state.totals.seeds_minor, pools,
                        state.totals.payouts_minor)


def check_conservation(state: PoolState) -> None:
    c = conservation(state)
    if not c.balanced:
        raise InvariantViolation(
            f"pool {state.pool_id}: contributions {c.contributions_minor} + seeds {c.seeds_minor} != "
            f"pools {c.pools_minor} + payouts {c.payouts_minor}")


def ledger_conservation(postings: Iterable[Posting], config: PoolConfig) -> tuple[Conservation, dict[str, int]]:
    """The conservation figures of one pool as its ledger legs show them, and the balance
    of each of the pool's accounts. A leg that moves money between a pool account and
    anything but a brand's contributions, the seed funding or the jackpot payouts is a
    bug: it raises InvariantViolation."""
    mine = {liability_account(config, t.name) for t in config.tiers}
    mine |= {reserve_account(config, t.name) for t in config.tiers}
    seeds_from, payouts_to = seed_account(config.currency), payout_account(config.currency)
    contributions_from = "system:JACKPOT_CONTRIBUTIONS:"
    balances = {account: 0 for account in mine}
    contributions = seeds = payouts = 0
    for p in postings:
        into, out_of = p.credit_account in mine, p.debit_account in mine
        if not (into or out_of):
            continue
        if into:
            balances[p.credit_account] += p.amount_minor
        if out_of:
            balances[p.debit_account] -= p.amount_minor
        if into and out_of:
            continue  # between a tier and its reserve
        if into and p.debit_account.startswith(contributions_from) and p.debit_account.endswith(":" + config.currency):
            contributions += p.amount_minor
        elif into and p.debit_account == seeds_from:
            seeds += p.amount_minor
        elif out_of and p.credit_account == payouts_to:
            payouts += p.amount_minor
        else:
            raise InvariantViolation(f"posting {p.operation_id}/{p.leg} moves pool money "
                                     f"{p.debit_account} -> {p.credit_account}")
    return Conservation(contributions, seeds, sum(balances.values()), payouts), balances


def check_ledger(state: PoolState, postings: Iterable[Posting]) -> None:
    """The ledger and the pool record agree to the minor unit, and both conserve money."""
    figures, balances = ledger_conservation(postings, state.config)
    if not figures.balanced:
        raise InvariantViolation(f"pool {state.pool_id}: the ledger does not conserve money: {figures}")
    if figures != conservation(state):
        raise InvariantViolation(f"pool {state.pool_id}: ledger {figures} != record {conservation(state)}")
    for name, tier in state.tiers.items():
        if balances[liability_account(state.config, name)] != tier.size_minor:
            raise InvariantViolation(f"pool {state.pool_id} tier {name}: ledger size differs from the record")
        if balances[reserve_account(state.config, name)] != tier.reserve_minor:
            raise InvariantViolation(f"pool {state.pool_id} tier {name}: ledger reserve differs from the record")


def check_pool(state: PoolState) -> None:
    """Invariants of one pool record; a failure is a bug in decide, never bad input."""
    if state.config is None:
        if state.tiers or state.wins or state.totals != Totals():
            raise InvariantViolation(f"pool {state.pool_id} holds money but has no configuration")
        return
    config = state.config
    if set(state.tiers) != {t.name for t in config.tiers}:
        raise InvariantViolation(f"pool {state.pool_id}: tiers {sorted(state.tiers)} differ from its configuration")
    for tier in config.tiers:
        current = state.tiers[tier.name]
        where = f"pool {state.pool_id} tier {tier.name}"
        if current.size_minor < 0 or current.reserve_minor < 0:
            raise InvariantViolation(f"{where} is negative: size {current.size_minor}, reserve {current.reserve_minor}")
        if tier.cap_minor is not None and current.size_minor > tier.cap_minor:
            raise InvariantViolation(f"{where}: size {current.size_minor} is above the cap {tier.cap_minor}")
        if current.drop_point_minor:
            if current.size_minor >= current.drop_point_minor:
                raise InvariantViolation(f"{where} reached its drop point without dropping")
            if current.drop_commitment != commit_point(current.drop_point_minor, current.drop_nonce):
                raise InvariantViolation(f"{where}: the drop point does not match its commitment")
    for win in state.wins.values():
        if win.amount_minor < 1 or win.state not in (PAYOUT_REQUESTED, CREDITED, FAILED) or win.attempt < 1:
            raise InvariantViolation(f"pool {state.pool_id}: malformed win {win}")
    if any(p.entries < 1 for p in state.participants.values()):
        raise InvariantViolation(f"pool {state.pool_id}: a participant without entries")
    totals = state.totals
    if min(totals.contributions_minor, totals.seeds_minor, totals.payouts_minor) < 0:
        raise InvariantViolation(f"pool {state.pool_id}: negative totals {totals}")
    check_conservation(state)


# ---------------------------------------------------------------- reads

def next_timer_ms(state: PoolState, rules: Rules) -> int | None:
    """When this pool next needs a Tick: a timed deadline, a payout to send again or a
    failed payout to retry. The agent keeps one timer per pool at this time."""
    if state.config is None:
        return None
    times = []
    if state.config.kind == "timed" and state.config.status == OPEN and state.deadline_ms:
        times.append(state.deadline_ms)
    for win in state.wins.values():
        if win.state == PAYOUT_REQUESTED:
            times.append(win.changed_at_ms + rules.payout_resend_ms)
        elif win.state == FAILED and win.retryable and win.attempt < rules.max_payout_attempts:
            times.append(win.changed_at_ms + rules.payout_retry_ms)
    return min(times) if times else None


def mask_player(player_id: str) -> str:
    """A winner as a public widget may show them: the first two characters only."""
    return (player_id[:2] if len(player_id) > 4 else "") + "***"


def pool_view(state: PoolState) -> dict:
    """The public read of a pool and the snapshot for the size cache and the widget:
    sizes, seeds, caps, odds, drop ranges and their commitments, never a drop point."""
    config = state.config
    if config is None:
        return {"pool_id": state.pool_id, "exists": False}
    tiers = []
    for tier in config.tiers:
        current = state.tiers[tier.name]
        last = current.last_win
        tiers.append({
            "tier": tier.name, "size": current.size_minor, "seed": tier.seed_minor, "cap": tier.cap_minor,
            "reserve": current.reserve_minor, "share_bps": tier.share_bps, "odds": ppb_to_text(tier.odds_ppb),
            "odds_ppb": tier.odds_ppb, "cycle": current.cycle,
            "drop_range": [tier.drop_min_minor, tier.drop_max_minor] if tier.has_drop_range else None,
            "drop_commitment": current.drop_commitment or None,
            "last_winner": None if last is None else {"player": mask_player(last.player_id),
                                                      "amount": last.amount_minor, "at_ms": last.at_ms},
        })
    return {
        "pool_id": config.pool_id, "name": config.name, "kind": config.kind, "status": config.status,
        "currency": config.currency,
        "brand_ids": list(config.brand_ids), "region": config.region, "network": config.network,
        "contribution_bps": config.contribution_bps, "min_bet": config.min_bet_minor,
        "size": sum(t.size_minor for t in state.tiers.values()), "tiers": tiers,
        "participants": len(state.participants),
        "deadline_ms": state.deadline_ms if config.kind == "timed" else None,
        "server_seed_hash": config.server_seed_hash,
        "chain_head": {"seq": state.chain_seq, "hash": state.chain_hash},
        "open_payouts": sum(1 for w in state.wins.values() if w.state != CREDITED),
        "version": state.version,
    }
