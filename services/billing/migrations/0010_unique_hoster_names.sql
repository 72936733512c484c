-- A live (not revoked) hoster's name is its own: OpenRouter's provider.only / order / ignore name hosters by
-- it, so a second hoster under the same name (compared case-insensitively) could be picked in its place.
-- The unique index makes PostgreSQL refuse a second, so two registrations at once cannot both win.
--
-- A database from before this rule may hold live duplicates. The earliest registered (created_at, then id)
-- keeps the name; each later one is renamed to "<name>-<first 8 hex digits of its id>" (with "-2", "-3",
-- ... after it in the unlikely case that name is taken too), deterministically, before the index is made.
-- `computeshare hoster list` shows the new names; a renamed hoster is still named by its UUID as before.
DO $$
DECLARE
    dup record;
    candidate text;
    n integer;
BEGIN
    FOR dup IN
        SELECT id, name FROM (
            SELECT id, name, created_at,
                   row_number() OVER (PARTITION BY lower(name) ORDER BY created_at, id) AS rank
            FROM hosters WHERE revoked_at IS NULL
        ) ranked
        WHERE rank > 1
        ORDER BY created_at, id
    LOOP
        n := 1;
        LOOP
            candidate := dup.name || '-' || left(replace(dup.id::text, '-', ''), 8)
                         || CASE WHEN n > 1 THEN '-' || n ELSE '' END;
            EXIT WHEN NOT EXISTS (
                SELECT 1 FROM hosters WHERE revoked_at IS NULL AND lower(name) = lower(candidate)
            );
            n := n + 1;
        END LOOP;
        UPDATE hosters SET name = candidate WHERE id = dup.id;
    END LOOP;
END
$$;

CREATE UNIQUE INDEX hosters_live_name ON hosters (lower(name)) WHERE revoked_at IS NULL;
