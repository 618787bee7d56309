-- Retention now deletes a message's own auto-reply contents with the
-- message (reports.sql purge_final_messages): they hold the recipient's
-- variables, personal data kept for that message only. The rows retention
-- left behind before are deleted here.
DELETE FROM send_auto_replies a
WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = a.message_id);
