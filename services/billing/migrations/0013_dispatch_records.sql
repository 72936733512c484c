-- An attempt's record is the router's (``DispatchRecord``, carried by the request's settlement), no longer a
-- hoster's report: keyed by request, attempt and hoster, so no record of one hoster can stand in for another's.
ALTER TABLE usage_records DROP CONSTRAINT usage_records_pkey;
ALTER TABLE usage_records ADD PRIMARY KEY (request_id, attempt, hoster_id);
COMMENT ON TABLE usage_records IS
    'Every attempt a router dispatched and a hoster took, as the router recorded it when the request settled: '
    'dispatch prices, the router''s verdict, the ingress''s count of what reached the client (chunks_sent) and '
    'time to first content, and the usage the hoster claimed.';
