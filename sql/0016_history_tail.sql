-- The metrics read each new row of `events` once, by id (id > the last one
-- read; see services/store/src/fleet.rs). The primary key (task_id, id)
-- cannot serve that, and 0002_lean_writes.sql dropped the btree on id to
-- keep an index entry off every transition. A BRIN index is a few pages
-- per million rows and costs an insert almost nothing: ids grow with the
-- table's physical order (rows are never updated or deleted), and the
-- newest pages, not yet summarized, are always scanned, which is exactly
-- the tail that is read.
CREATE INDEX events_id_brin ON events USING brin (id);
