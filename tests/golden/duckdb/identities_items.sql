WITH __tl_v_identities AS NOT MATERIALIZED (
  SELECT
    COALESCE(m.user_id, i.user_id) AS user_id,
    i.id_type,
    i.id_value
  FROM tl_identities AS i
  LEFT JOIN (
    SELECT
      profile_id,
      user_id
    FROM tl_user_map
    WHERE
      project = 'demo'
  ) AS m
    ON m.profile_id = i.user_id
  WHERE
    i.project = 'demo'
), __tl_v_items AS NOT MATERIALIZED (
  SELECT
    t.item_type,
    t.item_id,
    t.properties,
    t.updated_at
  FROM tl_items AS t
  WHERE
    t.project = 'demo'
)
SELECT
  *
FROM __tl_v_identities AS identities
UNION ALL
SELECT
  item_id,
  item_type,
  NULL
FROM __tl_v_items AS items
