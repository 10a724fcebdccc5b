-- Streams by category (the stream id up to its first `-`), in byte order: what the console's
-- stream browser pages through. Listing the categories is a skip scan over the first column
-- (one probe per category); listing one category's streams is a range of the second. A plain
-- index on the id would not do: ids of one category are not contiguous in id order (`a-1`
-- sorts after `a b-1`, of category `a b`). Appends insert a stream's row once, when the stream
-- starts, so the index costs nothing on later appends to it.
CREATE INDEX streams_by_category ON streams
    ((split_part(stream_id, '-', 1)) COLLATE "C", stream_id COLLATE "C");
