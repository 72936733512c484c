-- Parameters the client sent that the attempt's hoster does not take (dropped, shown in the routing record).
ALTER TABLE usage_records ADD COLUMN dropped_parameters text[] NOT NULL DEFAULT '{}';
