-- One row per voter: a changed vote replaces the voter's row (counted once per voter).
-- cast_at (epoch ms of the click) keeps the newest vote when retries arrive out of order.
CREATE TABLE IF NOT EXISTS votes (
    voter_id text PRIMARY KEY,
    vote     text NOT NULL,
    cast_at  bigint NOT NULL
);
