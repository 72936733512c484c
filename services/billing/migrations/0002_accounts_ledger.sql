-- Accounts hold prepaid credits as integer micro-credits. `balance` is what can be spent now, `reserved`
-- what open requests hold; both always equal the sum of their ledger entries (`computeshare ledger check`).
CREATE TABLE accounts (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL,
    balance     bigint      NOT NULL DEFAULT 0 CHECK (balance >= 0),
    reserved    bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    daily_cap   bigint      CHECK (daily_cap >= 0),
    -- Spend of `spend_day` (UTC): charges plus open reservations; a new day starts from zero.
    spend_day   date        NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')::date,
    day_spend   bigint      NOT NULL DEFAULT 0 CHECK (day_spend >= 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Keys are stored only as their SHA-256; the key itself is shown once, at creation.
CREATE TABLE api_keys (
    id          text        PRIMARY KEY,
    account_id  uuid        NOT NULL REFERENCES accounts (id),
    key_hash    bytea       NOT NULL UNIQUE,
    prefix      text        NOT NULL,
    rpm         integer     CHECK (rpm > 0),
    tpm         integer     CHECK (tpm > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_account ON api_keys (account_id);

-- Double entry: every movement is a transaction whose entries sum to zero. Ledger accounts are named
-- `client:<account>`, `reserved:<account>`, `hoster:<hoster>`, `platform:fees`, `external:topups`.
CREATE TABLE ledger_transactions (
    id          bigserial   PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN ('topup', 'reserve', 'settle', 'expire')),
    request_id  text,
    account_id  uuid        REFERENCES accounts (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger_entries (
    id              bigserial   PRIMARY KEY,
    tx_id           bigint      NOT NULL REFERENCES ledger_transactions (id),
    ledger_account  text        NOT NULL,
    kind            text        NOT NULL
                    CHECK (kind IN ('topup', 'reserve', 'charge', 'hoster_earning', 'platform_fee', 'release')),
    amount          bigint      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_account ON ledger_entries (ledger_account);
CREATE INDEX ledger_entries_tx ON ledger_entries (tx_id);

-- One row per admitted request: what was held, then what was charged.
CREATE TABLE reservations (
    request_id         text        PRIMARY KEY,
    account_id         uuid        NOT NULL REFERENCES accounts (id),
    key_id             text        NOT NULL REFERENCES api_keys (id),
    amount             bigint      NOT NULL CHECK (amount >= 0),
    fee_bps            integer     NOT NULL,
    spend_day          date        NOT NULL,
    status             text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'settled', 'expired')),
    model              text,
    prompt_tokens      integer     NOT NULL DEFAULT 0,
    completion_tokens  integer     NOT NULL DEFAULT 0,
    charged            bigint      NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    settled_at         timestamptz
);
CREATE INDEX reservations_open ON reservations (created_at) WHERE status = 'open';
CREATE INDEX reservations_account ON reservations (account_id, created_at DESC);

-- Fixed one-minute windows per key, shared by every ingress replica through this table.
CREATE TABLE rate_windows (
    key_id        text        NOT NULL,
    window_start  timestamptz NOT NULL,
    requests      integer     NOT NULL,
    tokens        bigint      NOT NULL,
    PRIMARY KEY (key_id, window_start)
);
