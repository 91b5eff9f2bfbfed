# test/t/037_sequences_renamed_midway.pl: sequences renamed or dropped on
# the source between the catalog read that names them and the read of their
# relations.
#
# The state of a sequence not called (here: setval(s, v, false)) is read
# from its relation, by a statement naming it as the catalog read said.  A
# session renames two such sequences, moving and going, and holds the lock
# until the cutover's catalog read waits for it: that read then names them
# by their old names, and the relation read fails with undefined_table.  The
# session commits, then drops the second one.  The cutover must look the
# sequences up again by OID and go on: it succeeds, the source's log shows
# the failed read, and the renamed sequence, now matched by no name here,
# is reported as found on the source only (and moving as found here only).
# When the DROP lands decides the rest: before the catalog read reaches
# going, pg_sequence_last_value() fails there (XX000 before PostgreSQL 18)
# and the catalog read is made again; after it, the relation read fails on
# moving's old name and going is read or forgotten as dropped.  Either way
# the cutover succeeds.

use strict;
use warnings;

use lib 'test/lib';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use ZdmTest;

my $source = start_source('source');
my $target = start_target('target');

same_schema_on_both($source, $target, q{
CREATE TABLE items (id serial PRIMARY KEY, v int);
CREATE SEQUENCE moving;
CREATE SEQUENCE going;
});
$source->safe_psql('app', q{
INSERT INTO items (v) SELECT g FROM generate_series(1, 5) g;
SELECT setval('moving', 500, false);
SELECT setval('going', 700, false);
});

init_migration($source, $target);

# Rename both, wait (holding their locks) until another session waits for
# one of them, commit, drop one.
my $renamer = background_sql($source, 'app', 'BEGIN',
	'ALTER SEQUENCE moving RENAME TO moved',
	'ALTER SEQUENCE going RENAME TO gone_soon',
	q{DO $$
BEGIN
  WHILE NOT EXISTS (SELECT 1 FROM pg_locks
                    WHERE locktype = 'relation' AND NOT granted
                      AND relation IN ('moved'::regclass, 'gone_soon'::regclass))
  LOOP
    PERFORM pg_sleep(0.05);
  END LOOP;
END $$},
	'COMMIT',
	'DROP SEQUENCE gone_soon');

my $oids = $source->safe_psql('app',
	q{SELECT 'moving'::regclass::oid || ',' || 'going'::regclass::oid});
ok( $source->poll_query_until('app', qq{
SELECT count(*) = 2 FROM pg_locks
WHERE locktype = 'relation' AND mode = 'AccessExclusiveLock' AND granted
  AND relation IN ($oids)}),
	'the renaming session holds both sequences');

my ($ret, $stdout, $stderr) =
  psql_verbose($target, 'app', 'CALL zdm.cutover(sequence_buffer => 100)');
is($ret, 0, 'cutover succeeds although sequences were renamed midway')
  or diag $stderr;
my ($renamer_ret, $renamer_out, $renamer_err) =
  finish_background_sql($renamer);
is($renamer_ret, 0, 'the renaming session waited for the cutover, then committed')
  or diag $renamer_err;

like(slurp_file($source->logfile),
	qr/relation "public\.(?:moving|going)" does not exist|could not open relation with OID/,
	'a read made with the catalog as it was before the rename failed on the source');
like($stderr,
	qr/sequences of the source have no counterpart on this target and were left alone: [^\n]*public\.moved/,
	'the renamed sequence is read under its new name (found on the source only)');
like($stderr,
	qr/sequences of this target have no counterpart on the source and were not set: [^\n]*public\.moving/,
	'... and its old name here is reported as found here only');
is($target->safe_psql('app', 'SELECT last_value FROM items_id_seq'),
	'105', 'the other sequences are set as usual');

done_testing();
