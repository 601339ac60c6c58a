-- Sub-tasks an agent creates (`task.create`) remember their parent and how
-- deep they are, so that one task cannot multiply work without end: the
-- store locks the parent's row and checks its depth and its number of
-- children in the transaction that inserts the child. Tasks submitted by a
-- person are depth 0 with no parent; the partial index holds only children.
ALTER TABLE tasks ADD COLUMN parent_id uuid, ADD COLUMN depth integer NOT NULL DEFAULT 0;
CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL;
