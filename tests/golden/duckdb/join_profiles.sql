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
), __tl_v_profiles AS NOT MATERIALIZED (
  SELECT
    p.user_id,
    p.properties,
    p.first_seen,
    p.last_seen,
    p.event_count
  FROM tl_profiles AS p
  WHERE
    p.project = 'demo'
    AND NOT p.user_id IN (
      SELECT
        profile_id
      FROM tl_user_map
      WHERE
        project = 'demo'
    )
), __tl_cte_0 AS (
  SELECT
    user_id
  FROM __tl_v_events AS events
  WHERE
    event = 'buy'
)
SELECT
  p.user_id,
  p.properties
FROM __tl_v_profiles AS p
JOIN __tl_cte_0 AS b
  USING (user_id)
