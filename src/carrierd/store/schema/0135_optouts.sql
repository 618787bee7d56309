-- DOMAIN §12: one opt-out list per account. Numbers are canonical (+81...,
-- domain/numbers.py). `source` says how the number came on the list, which
-- an operator is asked about when a recipient complains: the API, a CSV
-- import, the recipient's own opt-out URL, or an inbound keyword reply.
CREATE TABLE optouts (
    account_id text NOT NULL,
    msisdn     text NOT NULL CHECK (msisdn ~ '^\+81[1-9][0-9]{9}$'),
    added_at   timestamptz NOT NULL,
    source     text NOT NULL CHECK (source IN ('api', 'csv', 'optout_url', 'keyword')),
    PRIMARY KEY (account_id, msisdn)
);
-- Listing pages in the order numbers were added, cursor (added_at, msisdn).
CREATE INDEX optouts_by_added ON optouts (account_id, added_at, msisdn);
