-- Hosters who joined the network: their identity (the UUID clients name in allow_hosters/deny_hosters),
-- the facts routing believes from the registration rather than from the hoster (cloud, region), the NATS
-- user their credentials were minted for, and the account their earnings belong to.
CREATE TABLE hosters (
    id               uuid        PRIMARY KEY,
    name             text        NOT NULL,
    region           text,
    cloud            boolean     NOT NULL DEFAULT false,
    account_id       uuid        NOT NULL REFERENCES accounts (id),
    nats_public_key  text        NOT NULL UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz
);
