"""The jackpot engine's pure core (SPEC §3): one aggregate per pool, keyed by pool_id.

    state.py  the pool record and its parts
    core.py   commands, result codes, events, decide / evolve, invariants, reads
    rng.py    HMAC-SHA256 draws from the server seed, must-drop commitments
    chain.py  the hash-chained audit log and its verify

Its msgpack record codec is tables/pools.py.
"""
