-- Records sent by module hosts carry an id, so a batch retried after a lost answer is
-- stored once.
ALTER TABLE audit_log ADD COLUMN record_id TEXT;
CREATE UNIQUE INDEX audit_log_record_id ON audit_log (record_id);
