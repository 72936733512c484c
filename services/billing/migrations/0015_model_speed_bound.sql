-- A registered model's plausibility bound on a hoster's speed (tokens per second): an attempt the network
-- measures past it is flagged and its timing not used to rank. NULL: the router's default bound.
ALTER TABLE model_tokenizers ADD COLUMN max_tokens_per_s double precision
    CHECK (max_tokens_per_s > 0 AND max_tokens_per_s <= 1e9);
