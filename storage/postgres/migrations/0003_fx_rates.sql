-- FX rates in major units (units of quote per unit of base), each valid from a time
-- until the next one for the same pair. Market data, shared by every tenant.
CREATE TABLE fx_rates (
    base       char(3)        NOT NULL,
    quote      char(3)        NOT NULL,
    rate       numeric(24, 12) NOT NULL CHECK (rate > 0),
    valid_from timestamptz    NOT NULL,
    created_at timestamptz    NOT NULL DEFAULT now(),
    PRIMARY KEY (base, quote, valid_from)
);
