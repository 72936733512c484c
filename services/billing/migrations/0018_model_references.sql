-- The hosters the operator designates as a registered model's reference (its own deployment of the weights):
-- spot checks compare the model's other hosters with them (README, "Verification").
CREATE TABLE model_references (
    model text NOT NULL,
    hoster_id text NOT NULL,
    designated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, hoster_id)
);
