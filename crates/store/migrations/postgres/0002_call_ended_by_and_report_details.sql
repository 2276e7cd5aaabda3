-- Who ended a call (NULL for a disconnect or a shutdown), and free text with a report.
ALTER TABLE calls ADD COLUMN ended_by TEXT;
ALTER TABLE reports ADD COLUMN details TEXT;
CREATE INDEX reports_created ON reports (created_at DESC);
