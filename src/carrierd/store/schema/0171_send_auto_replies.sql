-- A recipient's own auto-reply contents, when a send's auto-reply uses
-- variables (send_replies.py): substituted and checked at registration,
-- stored with the recipient's message in its batch's transaction, since a
-- recipient's variables are not kept. contents: {"": default, "<code>": ...},
-- each {"sms": ..., "rcs": ...}. Purged with nothing: a row is small and
-- read only through its message (retention may leave it behind).
CREATE TABLE send_auto_replies (
    message_id  bigint PRIMARY KEY,
    contents    jsonb NOT NULL
);
