-- What a request's hosters reported past its usage bounds (billed at the bounds instead), for its routing record.
ALTER TABLE reservations ADD COLUMN usage_discrepancy text;
