-- Event ids became globally unique text (UUIDv7) in plugin-api 1.0; they were per-run
-- sequence numbers before, which restarted at 1 and made new events look like old ones.
ALTER TABLE notifications ALTER COLUMN event_id TYPE TEXT USING 'legacy-' || event_id || '-' || id;
