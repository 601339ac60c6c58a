-- The metrics read each new row of `events` once, by id, in windows of
-- ids (id > the last one read AND id <= it + 50 000; see
-- services/store/src/fleet.rs). The primary key (task_id, id) cannot serve
-- that, and 0002_lean_writes.sql dropped the btree on id to keep an index
-- entry off every transition. A BRIN index is a few pages per million rows
-- and costs an insert almost nothing: ids grow with the table's physical
-- order (rows are never updated or deleted). Page ranges are summarized as
-- they fill (autosummarize), not only at the next vacuum, so a read scans
-- the ranges of its window and not the whole unsummarized tail.
CREATE INDEX events_id_brin ON events USING brin (id)
    WITH (pages_per_range = 32, autosummarize = on);
