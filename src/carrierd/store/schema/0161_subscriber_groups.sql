-- Subscriber groups (サブスクライブグループ, KMC §3.4.7): the numbers
-- subscribed to an account's +Message official account, fetched from the
-- platform into a named group, sendable as a send's recipients.
CREATE TABLE subscriber_groups (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  text NOT NULL REFERENCES accounts,
    name        text NOT NULL,
    bot_id      text NOT NULL,
    size        integer NOT NULL DEFAULT 0,
    fetched_at  timestamptz NOT NULL
);
CREATE UNIQUE INDEX subscriber_groups_name ON subscriber_groups (account_id, name);

CREATE TABLE subscriber_group_members (
    group_id  bigint NOT NULL REFERENCES subscriber_groups ON DELETE CASCADE,
    msisdn    text NOT NULL CHECK (msisdn ~ '^\+81[1-9][0-9]{9}$'),
    PRIMARY KEY (group_id, msisdn)
);
