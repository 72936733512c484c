-- How many chunks of an attempt reached the client: whether a failed stream is billed (``attempt_billable``).
ALTER TABLE usage_records ADD COLUMN chunks_sent integer NOT NULL DEFAULT 0;
