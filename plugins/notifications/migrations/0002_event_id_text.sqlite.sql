-- Event ids became globally unique text (UUIDv7) in plugin-api 1.0; they were per-run
-- sequence numbers before, which restarted at 1 and made new events look like old ones.
CREATE TABLE notifications_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    message TEXT NOT NULL
);
INSERT INTO notifications_new (id, event_id, topic, message)
    SELECT id, 'legacy-' || event_id || '-' || id, topic, message FROM notifications;
DROP TABLE notifications;
ALTER TABLE notifications_new RENAME TO notifications;
