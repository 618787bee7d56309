-- DOMAIN §12: a link code is compared byte by byte. Codes are ASCII
-- letters and digits looked up by equality only; under the database's
-- locale (C.UTF-8 here, anything elsewhere) every comparison went through
-- the collation library, on each of the ~20 key comparisons of every
-- insert into the primary key (five per message at intake) and every
-- lookup (each redirect). The column keeps its rows; the index is rebuilt.
ALTER TABLE message_links ALTER COLUMN code TYPE text COLLATE "C";
