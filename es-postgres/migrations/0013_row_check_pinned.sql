-- The row check's function, with every function, operator and type it uses named in
-- pg_catalog: a plpgsql body resolves names through the search_path of the session that
-- inserts, so a writer with its own search_path (and its own json_typeof, say) could otherwise
-- store rows the check was meant to refuse. Same rules as 0010.
CREATE OR REPLACE FUNCTION event_row_is_valid(
    p_stream_id text,
    p_stream_version bigint,
    p_event_type text,
    p_schema_version integer,
    p_transaction_id bigint,
    p_position bigint,
    p_recorded_at timestamptz,
    p_metadata json
) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN pg_catalog.octet_length(p_stream_id) OPERATOR(pg_catalog.>=) 1
        AND pg_catalog.octet_length(p_stream_id) OPERATOR(pg_catalog.<=) 512
        AND p_stream_version OPERATOR(pg_catalog.>=) 1::pg_catalog.int8
        AND p_event_type OPERATOR(pg_catalog.<>) ''::pg_catalog.text
        AND p_schema_version OPERATOR(pg_catalog.>=) 1
        AND p_transaction_id OPERATOR(pg_catalog.>) 0::pg_catalog.int8
        AND p_position OPERATOR(pg_catalog.>) 0::pg_catalog.int8
        AND p_recorded_at OPERATOR(pg_catalog.>=)
            '4000-01-01 00:00:00+00 BC'::pg_catalog.timestamptz
        AND p_recorded_at OPERATOR(pg_catalog.<=)
            '100000-01-01 00:00:00+00'::pg_catalog.timestamptz
        AND pg_catalog.json_typeof(p_metadata) OPERATOR(pg_catalog.=) 'object'::pg_catalog.text;
END
$$;
