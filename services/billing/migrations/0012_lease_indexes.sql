-- The lease queries that run often, without scanning every lease or reservation ever made: each account's open
-- leases (reports, refusals), the given-back leases still keeping credit (every sweep), and a lease's
-- reservations (the ledger check).
CREATE INDEX leases_account_open ON leases (account_id) WHERE status = 'open';
CREATE INDEX leases_keeping ON leases (touched_at) WHERE status <> 'open' AND granted > attached + released;
CREATE INDEX reservations_lease ON reservations (lease_id) WHERE lease_id IS NOT NULL;
