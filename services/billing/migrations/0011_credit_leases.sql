-- Credit leases: a router holds part of an account's credit and admits the account's requests against it
-- without asking billing each time. `granted` left the balance for `reserved` when the lease was made; each
-- request admitted against it becomes a reservation of its own (`attached`, recorded in batches or at its
-- settlement); what no request took goes back to the balance when the router gives the lease back or stops
-- keeping it alive (`released`). So `reserved` = open reservations + every lease's granted - attached - released.
CREATE TABLE leases (
    lease_id    uuid        PRIMARY KEY,
    account_id  uuid        NOT NULL REFERENCES accounts (id),
    router_id   text        NOT NULL,
    granted     bigint      NOT NULL CHECK (granted >= 0),  -- 0: given back before it was granted
    attached    bigint      NOT NULL DEFAULT 0 CHECK (attached >= 0),
    released    bigint      NOT NULL DEFAULT 0 CHECK (released >= 0),
    spend_day   date        NOT NULL,
    status      text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'returned', 'expired')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    touched_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (attached + released <= granted)
);
CREATE INDEX leases_open_touched ON leases (touched_at) WHERE status = 'open';
CREATE INDEX leases_account ON leases (account_id);

ALTER TABLE reservations ADD COLUMN lease_id uuid REFERENCES leases (lease_id);

ALTER TABLE ledger_transactions DROP CONSTRAINT ledger_transactions_kind_check;
ALTER TABLE ledger_transactions ADD CONSTRAINT ledger_transactions_kind_check
    CHECK (kind IN ('topup', 'reserve', 'settle', 'expire', 'lease', 'lease_release'));
