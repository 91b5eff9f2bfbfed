-- defer_copy: no initial copy; changes stream from init on; the copy of the
-- existing rows is started later by hand, as the README shows.
SELECT on_both('CREATE TABLE dc_items (id int PRIMARY KEY, v text)');
SELECT on_source($$INSERT INTO dc_items SELECT g, 'before' FROM generate_series(1, 100) g$$);

SELECT source_dsn() AS dsn \gset
CALL zdm.init(:'dsn', defer_copy => true);
SELECT wait_ready();

-- Nothing copied, but new rows arrive.
SELECT count(*) FROM dc_items;
SELECT on_source($$INSERT INTO dc_items VALUES (101, 'after init')$$);
SELECT wait_for($$SELECT count(*) = 1 FROM dc_items$$);

-- Start the copy later: take the table out of the publication and the
-- subscription, empty it here, put it back and refresh with copy_data.
SELECT on_source('ALTER PUBLICATION zdm_pub DROP TABLE dc_items');
ALTER SUBSCRIPTION zdm_sub REFRESH PUBLICATION;
TRUNCATE dc_items;
SELECT on_source('ALTER PUBLICATION zdm_pub ADD TABLE dc_items');
ALTER SUBSCRIPTION zdm_sub REFRESH PUBLICATION WITH (copy_data = true);
SELECT wait_ready();
SELECT count(*), count(*) FILTER (WHERE v = 'before') AS copied FROM dc_items;

CALL zdm.abort();
SELECT source_objects();
SELECT on_both('DROP TABLE dc_items');
TRUNCATE zdm.event_log;
