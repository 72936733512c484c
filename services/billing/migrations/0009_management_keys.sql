-- Key kinds: an inference key calls models; a management key manages its account's keys and reads the whole
-- account, and never calls models. A label is the holder's own name for a key.
ALTER TABLE api_keys ADD COLUMN kind text NOT NULL DEFAULT 'inference' CHECK (kind IN ('inference', 'management'));
ALTER TABLE api_keys ADD COLUMN label text;
-- A key's last use is its latest admitted request: read from here, never written on the hot path.
CREATE INDEX reservations_key ON reservations (key_id, created_at DESC);
-- A hoster's console token (`ngh_...`), stored only as its SHA-256, shown once at registration.
ALTER TABLE hosters ADD COLUMN console_token_hash bytea UNIQUE;
-- A hoster's earnings per day (its `hoster:<id>` entries by time).
CREATE INDEX ledger_entries_account_time ON ledger_entries (ledger_account, created_at);
