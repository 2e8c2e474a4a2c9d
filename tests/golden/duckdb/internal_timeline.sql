SELECT
  e.event_id,
  e.event,
  7 AS user_id,
  e.distinct_id,
  e.time,
  e.received_at,
  e.source,
  e.properties
FROM tl_events AS e
WHERE
  e.project = 'demo' AND e.profile_id IN (7, 9) AND e.time < EPOCH_MS(1700000000000)
ORDER BY
  e.time DESC,
  e.event_id DESC
LIMIT 50
