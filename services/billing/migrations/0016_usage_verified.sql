-- Whether a request's billed usage was the network's own count (every billed attempt counted with its model's
-- registered tokenizer) or hosters' claims held to byte bounds only ("usage not verified"), for its routing
-- record. NULL: nothing was billed, or it settled before the router said.
ALTER TABLE reservations ADD COLUMN usage_verified boolean;
