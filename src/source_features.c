/*-------------------------------------------------------------------------
 *
 * source_features.c
 *		  What a source server can do, by its release: the one place that
 *		  knows which PostgreSQL version added what pg_zdm sends to it.
 *
 * Sources run PostgreSQL 10 to 18.  Every statement that differs between
 * them asks source_features() for its connection -- known from
 * PQserverVersion as soon as the connection is made, before any query --
 * and branches next to the SQL it changes, as pg_dump does with
 * remoteVersion.  Adding a difference is adding one field here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "pg_zdm.h"

/*
 * source_features: fill *features for the server behind conn.
 */
void
source_features(PGconn *conn, SourceFeatures *features)
{
	int			v = PQserverVersion(conn);

	features->version_num = v;
	features->supported = v >= ZDM_MIN_SOURCE_VERSION_NUM;
	features->jit = v >= 110000;
	features->execute_function = v >= 110000;
	features->truncate_replicated = v >= 110000;
	features->generated_columns = v >= 120000;
	features->slot_wal_status = v >= 130000;
	features->connection_check = v >= 140000;
	features->terminate_waits = v >= 140000;
	features->maintain_privilege = v >= 170000;
	features->tid_range_scan = v >= 140000;
}
