-- The Responses API's stored responses (store: true): the Response object as the client received it and the
-- input items of its request, per account, until they expire (CS_BILLING_RESPONSES_RETENTION_DAYS).
CREATE TABLE stored_responses (
    id text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    account_id uuid NOT NULL REFERENCES accounts (id),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    previous_response_id text,
    input_items jsonb NOT NULL CHECK (jsonb_typeof(input_items) = 'array'),
    response jsonb NOT NULL CHECK (jsonb_typeof(response) = 'object')
);
CREATE INDEX stored_responses_expiry ON stored_responses (expires_at);
COMMENT ON TABLE stored_responses IS
    'Responses kept for their account (POST /v1/responses with store), read back, continued and deleted by '
    'the ingress over billing.responses.*; expired rows are deleted by billing''s sweep.';
