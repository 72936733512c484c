-- Each attempt's hoster spot check verdict on the model when it ended (verified, failed, unchecked), as the
-- router recorded it, for the routing record (README, "Verification"). Older records have none.
ALTER TABLE usage_records ADD COLUMN verification text;
