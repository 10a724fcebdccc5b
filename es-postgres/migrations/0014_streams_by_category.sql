-- Listing the streams of one category (the stream id up to its first `-`) in byte order: the
-- console's stream browser pages through `stream_id COLLATE "C"` ranges, which the primary key
-- serves only where the database's collation is C. Appends insert a stream's row once, when
-- the stream starts, so this index costs nothing on later appends to it.
CREATE INDEX streams_stream_id_bytes ON streams (stream_id COLLATE "C");
