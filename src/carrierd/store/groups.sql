-- carrierd subscriber groups (サブスクライブグループ, KMC §3.4.7).
-- Same rules as queries.sql: one "-- name: x" block per statement, the time
-- always passed in.

-- name: upsert_group
-- A fetch into a name the account used before refreshes that group (its
-- row locked until the members are replaced: a send reading it meanwhile
-- sees the old members or the new, never half).
INSERT INTO subscriber_groups (account_id, name, bot_id, size, fetched_at)
VALUES ($1, $2, $3, 0, $4)
ON CONFLICT (account_id, name) DO UPDATE SET bot_id = EXCLUDED.bot_id
RETURNING id;

-- name: clear_group
DELETE FROM subscriber_group_members WHERE group_id = $1;

-- name: add_group_members
INSERT INTO subscriber_group_members (group_id, msisdn)
SELECT $1, m FROM unnest($2::text[]) AS m
ON CONFLICT DO NOTHING;

-- name: finish_group
UPDATE subscriber_groups
   SET size = (SELECT count(*) FROM subscriber_group_members WHERE group_id = $1),
       fetched_at = $2
 WHERE id = $1
RETURNING id, account_id, name, bot_id, size, fetched_at;

-- name: list_groups
SELECT id, account_id, name, bot_id, size, fetched_at FROM subscriber_groups
WHERE account_id = $1
ORDER BY name;
