WITH __tl_v_events AS NOT MATERIALIZED (
  SELECT
    e.event_id,
    e.event,
    COALESCE(m.user_id, e.profile_id) AS user_id,
    e.distinct_id,
    e.time,
    e.received_at,
    e.source,
    e.properties
  FROM tl_events AS e
  LEFT JOIN (
    SELECT
      profile_id,
      user_id
    FROM tl_user_map
    WHERE
      project = 'demo'
  ) AS m
    ON m.profile_id = e.profile_id
  WHERE
    e.project = 'demo'
)
SELECT
  user_id,
  time,
  event
FROM __tl_v_events AS events
WHERE
  time >= EPOCH_MS(1700000000000)
  AND time < EPOCH_MS(1700086400000)
  AND event IN ('buy', 'it''s')
ORDER BY
  user_id,
  time,
  event_id
