-- Every attempt of every request, as its adapter reported it when it ended.
CREATE TABLE usage_records (
    request_id        text             NOT NULL,
    attempt           integer          NOT NULL CHECK (attempt >= 1),
    hoster_id         uuid             NOT NULL,
    adapter_id        text             NOT NULL,
    model             text             NOT NULL,
    stream            boolean          NOT NULL,
    outcome           text             NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'cancelled')),
    prompt_tokens     integer          NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens integer          NOT NULL CHECK (completion_tokens >= 0),
    usage_estimated   boolean          NOT NULL,
    input_price       bigint           NOT NULL,
    output_price      bigint           NOT NULL,
    finish_reason     text,
    error             text,
    ttft_ms           double precision,
    duration_ms       double precision NOT NULL,
    finished_at       timestamptz      NOT NULL,
    recorded_at       timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, attempt)
);

CREATE INDEX usage_records_finished_at ON usage_records (finished_at);
CREATE INDEX usage_records_hoster ON usage_records (hoster_id, finished_at);
