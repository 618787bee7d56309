-- DOMAIN §12: the short links and opt-out URLs minted for each recipient at
-- intake, stored with the message in the same transaction, so the text the
-- SMSC receives is fixed at acceptance (a resend sends the same links).
-- `code` is what follows the domain in the link. A short link lives as long
-- as its message's delivery log (purged with it, §15); an opt-out URL
-- expires at `expires_at` (60 days) and is purged then.
-- The click log is kept on the row: the first click is written once and
-- never overwritten (coalesce), later clicks only count.
CREATE TABLE message_links (
    code            text PRIMARY KEY,
    message_id      bigint NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('link', 'optout')),
    -- 1..5 for short links in the order of the body; 0 for the opt-out URL.
    link_no         smallint NOT NULL CHECK (link_no BETWEEN 0 AND 5),
    target_url      text,
    account_id      text NOT NULL,
    msisdn          text NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz,
    clicks          integer NOT NULL DEFAULT 0,
    first_click_at  timestamptz,
    last_click_at   timestamptz,
    -- An opt-out URL whose page was confirmed (the number went on the list).
    confirmed_at    timestamptz,
    CHECK ((kind = 'link') = (target_url IS NOT NULL)),
    CHECK ((kind = 'optout') = (expires_at IS NOT NULL))
) WITH (fillfactor = 85);  -- room for the click updates to stay HOT
CREATE INDEX message_links_by_message ON message_links (message_id);
CREATE INDEX message_links_optout_expiry ON message_links (expires_at)
    WHERE expires_at IS NOT NULL;

-- +Message: when the recipient opened the message (the platform's
-- "displayed" event). A record beside the message, not a state: the
-- message was delivered, and what happens in the app after that is not
-- part of its lifecycle. The earliest report wins.
CREATE TABLE message_opens (
    message_id  bigint PRIMARY KEY,
    opened_at   timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL
);
