-- The model registry: each registered model's tokenizer, as its two Hugging Face files, byte for byte. A new
-- registration is a new version; earlier ones stay (the latest version is the model's tokenizer).
CREATE TABLE model_tokenizers (
    model text NOT NULL CHECK (length(model) BETWEEN 1 AND 256),
    version integer NOT NULL CHECK (version >= 1),
    tokenizer_json bytea NOT NULL,
    tokenizer_config_json bytea NOT NULL,
    tokenizer_sha256 text NOT NULL CHECK (tokenizer_sha256 ~ '^[0-9a-f]{64}$'),
    config_sha256 text NOT NULL CHECK (config_sha256 ~ '^[0-9a-f]{64}$'),
    -- Both files compressed as one (libs/contracts/models.py), sent to services in parts: stored uncompressed
    -- by PostgreSQL (it is compressed already), so a part is read without reading the rest.
    bundle bytea NOT NULL,
    bundle_sha256 text NOT NULL CHECK (bundle_sha256 ~ '^[0-9a-f]{64}$'),
    vocab_size integer NOT NULL CHECK (vocab_size > 0),
    has_chat_template boolean NOT NULL,
    source text NOT NULL CHECK (source IN ('files', 'gguf')),
    registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, version)
);
ALTER TABLE model_tokenizers ALTER COLUMN bundle SET STORAGE EXTERNAL;
COMMENT ON TABLE model_tokenizers IS
    'Registered models'' tokenizers (computeshare model register), every version kept; services fetch the '
    'latest over billing.tokenizer.fetch and count tokens with it.';
