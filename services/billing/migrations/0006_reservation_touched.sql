-- When a reservation's request was last known to be running (routers say so for their requests in flight):
-- the sweeper closes only reservations untouched for the TTL, so a long stream keeps its hold.
ALTER TABLE reservations ADD COLUMN touched_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX reservations_open_touched ON reservations (touched_at) WHERE status = 'open';
