/*-------------------------------------------------------------------------
 *
 * remote.c
 *		  The libpq connection to the source, without ever blocking interrupts.
 *
 * Connect and query loops wait on the process latch and the socket together,
 * so pg_cancel_backend, pg_terminate_backend, statement_timeout and
 * postmaster death all stop a call that waits on a slow or silent source
 * (the same loops as libpqwalreceiver.c; PostgreSQL 16 packaged them in
 * libpq-be-fe-helpers.h, which 15 lacks).
 *
 * No PGresult outlives a call: results are copied into palloc'd memory and
 * cleared before any ERROR.  Every connection is registered; one still open
 * when its (sub)transaction aborts is closed then, so an ERROR never leaks a
 * PGconn.  The cutover worker, whose connections span local transactions,
 * calls remote_keep_across_abort.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "pg_zdm.h"

typedef struct OpenConnection
{
	PGconn	   *conn;
	SubTransactionId subid;		/* closed when this subxact aborts */
	bool		kept;			/* survives (sub)transaction abort */
	const char *server;			/* for messages: "source server" unless set */
} OpenConnection;

static List *open_connections = NIL;	/* in TopMemoryContext */
static bool connect_replication = false;	/* next connect: replication=database */
static bool callbacks_registered = false;
static TimestampTz remote_deadline = 0;

static void close_on_abort(XactEvent event, void *arg);
static void close_on_subabort(SubXactEvent event, SubTransactionId mySubid,
							  SubTransactionId parentSubid, void *arg);

static void
register_connection(PGconn *conn)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	OpenConnection *entry = palloc0(sizeof(OpenConnection));

	if (!callbacks_registered)
	{
		RegisterXactCallback(close_on_abort, NULL);
		RegisterSubXactCallback(close_on_subabort, NULL);
		callbacks_registered = true;
	}
	entry->conn = conn;
	entry->subid = IsTransactionState() ? GetCurrentSubTransactionId() :
		TopSubTransactionId;
	open_connections = lappend(open_connections, entry);
	MemoryContextSwitchTo(oldcxt);
}

/*
 * remote_disconnect: close a connection and forget it.  NULL is fine.
 */
void
remote_disconnect(PGconn *conn)
{
	ListCell   *lc;

	if (conn == NULL)
		return;
	foreach(lc, open_connections)
	{
		OpenConnection *entry = lfirst(lc);

		if (entry->conn == conn)
		{
			open_connections = foreach_delete_current(open_connections, lc);
			pfree(entry);
			break;
		}
	}
	PQfinish(conn);
	ReleaseExternalFD();
}

/*
 * remote_keep_across_abort: the connection is the caller's to close, even
 * when a local transaction aborts (the cutover worker aborts local
 * transactions while it still needs the source).
 */
void
remote_keep_across_abort(PGconn *conn)
{
	ListCell   *lc;

	foreach(lc, open_connections)
	{
		OpenConnection *entry = lfirst(lc);

		if (entry->conn == conn)
			entry->kept = true;
	}
}

static void
close_matching(bool all, SubTransactionId subid)
{
	ListCell   *lc;

	foreach(lc, open_connections)
	{
		OpenConnection *entry = lfirst(lc);

		if (entry->kept || (!all && entry->subid != subid))
			continue;
		PQfinish(entry->conn);
		ReleaseExternalFD();
		open_connections = foreach_delete_current(open_connections, lc);
		pfree(entry);
	}
}

static void
close_on_abort(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		close_matching(true, InvalidSubTransactionId);
}

static void
close_on_subabort(SubXactEvent event, SubTransactionId mySubid,
				  SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		close_matching(false, mySubid);
}

/*
 * remote_set_deadline: every wait of this backend on the source gives up at
 * deadline (0: no deadline; then only interrupts end a wait).
 */
void
remote_set_deadline(TimestampTz deadline)
{
	remote_deadline = deadline;
}

/*
 * Wait until the socket is ready for io_event, the latch is set or the
 * deadline passes.  Returns false on timeout.  When interruptible, pending
 * interrupts are serviced (and may throw); otherwise the caller holds them.
 */
static bool
wait_on_socket(PGconn *conn, int io_event, TimestampTz deadline,
			   bool interruptible)
{
	for (;;)
	{
		int			events = WL_LATCH_SET | WL_EXIT_ON_PM_DEATH | io_event;
		long		timeout = -1;
		int			rc;

		if (deadline != 0)
		{
			timeout = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
													  deadline);
			if (timeout <= 0)
				return false;
			events |= WL_TIMEOUT;
		}

		rc = WaitLatchOrSocket(MyLatch, events, PQsocket(conn), timeout,
							   PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			if (interruptible)
				CHECK_FOR_INTERRUPTS();
		}
		if (rc & io_event)
			return true;
	}
}

/*
 * What the source says besides results (NOTICEs of our DDL, the message of
 * a session it ends) goes to this server's log at DEBUG1 rather than to
 * libpq's default, stderr.
 */
static void
log_source_notice(void *arg, const PGresult *res)
{
	ereport(DEBUG1,
			(errmsg_internal("source server: %s",
							 pchomp(PQresultErrorMessage(res)))));
}

/*
 * Start a connection and drive PQconnectPoll to the end.  Returns the
 * connection (status OK or BAD: the caller looks) or NULL when no file
 * descriptor or memory is left; *timed_out says the deadline passed.
 */
static PGconn *
connect_loop(const char *dsn, TimestampTz deadline, bool interruptible,
			 bool *timed_out)
{
	static const char *keywords[] = {"fallback_application_name", "dbname",
	"replication", NULL};
	const char *values[4];
	PGconn	   *conn;
	PostgresPollingStatusType status = PGRES_POLLING_WRITING;

	*timed_out = false;
	if (!AcquireExternalFD())
		return NULL;

	values[0] = "pg_zdm";
	values[1] = dsn;
	/* a keyword after the expanded dsn overrides what the dsn says */
	values[2] = connect_replication ? "database" : NULL;
	values[3] = NULL;
	conn = PQconnectStartParams(keywords, values, true);
	if (conn == NULL)
	{
		ReleaseExternalFD();
		return NULL;
	}
	register_connection(conn);
	PQsetNoticeReceiver(conn, log_source_notice, NULL);

	while (PQstatus(conn) != CONNECTION_BAD &&
		   status != PGRES_POLLING_OK && status != PGRES_POLLING_FAILED)
	{
		int			io_event = status == PGRES_POLLING_READING ?
			WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE;

		if (!wait_on_socket(conn, io_event, deadline, interruptible))
		{
			*timed_out = true;
			break;
		}
		status = PQconnectPoll(conn);
	}
	return conn;
}

/*
 * Settings every source session gets: nothing it runs depends on the
 * source's search_path, datestyle or encoding defaults, and its catalog
 * queries are not worth JIT compilation (which can cost a second; sources
 * before 11 have no JIT).  Only settings every release has come before the
 * version is known to be supported, so that an older server gets the
 * server_version refusal rather than an unknown-setting error.
 */
static const char *
session_setup(PGconn *conn)
{
	SourceFeatures features;

	source_features(conn, &features);
	if (features.jit)
		return "SET search_path = pg_catalog; SET datestyle = ISO; "
			"SET client_encoding = 'UTF8'; SET intervalstyle = postgres; "
			"SET jit = off";
	return "SET search_path = pg_catalog; SET datestyle = ISO; "
		"SET client_encoding = 'UTF8'; SET intervalstyle = postgres";
}

/*
 * Connect and run the session setup.  Returns NULL and *reason (with
 * *needs_password) when the source cannot be reached; interrupts are
 * serviced when interruptible.  timeout_s <= 0 waits without limit.
 */
static PGconn *
try_connect(const char *dsn, int timeout_s, bool interruptible,
			char **reason, bool *needs_password)
{
	TimestampTz deadline = 0;
	bool		timed_out;
	PGconn	   *conn;

	*needs_password = false;
	if (timeout_s > 0)
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											   timeout_s * 1000);
	/* the caller's deadline bounds a connection, except a cleanup's own */
	if (interruptible && remote_deadline != 0 &&
		(deadline == 0 || remote_deadline < deadline))
		deadline = remote_deadline;

	conn = connect_loop(dsn, deadline, interruptible, &timed_out);
	if (conn == NULL)
	{
		*reason = pstrdup("There are too many open files on this server, or no memory left for a connection.");
		return NULL;
	}
	if (timed_out)
		*reason = psprintf("The source did not complete the connection within %d seconds.",
						   timeout_s);
	else if (PQstatus(conn) != CONNECTION_OK)
	{
		*reason = pchomp(PQerrorMessage(conn));
		*needs_password = PQconnectionNeedsPassword(conn);
	}
	else if (!interruptible)
	{
		if (remote_command_quietly(conn, session_setup(conn), 0, NULL, timeout_s * 1000))
			return conn;
		*reason = pchomp(PQerrorMessage(conn));
	}
	else
	{
		PG_TRY();
		{
			remote_command(conn, session_setup(conn), "session setup");
		}
		PG_CATCH();
		{
			remote_disconnect(conn);
			PG_RE_THROW();
		}
		PG_END_TRY();
		return conn;
	}
	remote_disconnect(conn);
	return NULL;
}

/*
 * remote_try_connect: a connection to the source, or NULL and *reason
 * (libpq's words, never the DSN).  Interruptible; waits at most the DSN's
 * connect_timeout (10 s by default).
 */
PGconn *
remote_try_connect(const char *dsn, char **reason)
{
	bool		needs_password;

	return try_connect(dsn, dsn_connect_timeout(dsn), true, reason,
					   &needs_password);
}

/*
 * remote_connect: a connection to the source, set up for our queries, or an
 * ERROR (SQLSTATE 08001, libpq's words in the detail, never the DSN).
 * purpose names the step in the message ("to check it", "to create the
 * slot").  Waits at most the DSN's connect_timeout (10 s by default).
 */
PGconn *
remote_connect(const char *dsn, const char *purpose)
{
	return remote_connect_to(dsn, "source", purpose);
}

/*
 * remote_connect_to: remote_connect to side ("source", or "target" for a
 * connection of the fallback to this very server), which the messages
 * about the connection name.
 */
PGconn *
remote_connect_to(const char *dsn, const char *side, const char *purpose)
{
	char	   *reason;
	bool		needs_password;
	PGconn	   *conn;
	ListCell   *lc;

	conn = try_connect(dsn, dsn_connect_timeout(dsn), true, &reason,
					   &needs_password);
	if (conn == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
				 errmsg("could not connect to the %s server %s", side, purpose),
				 errdetail_internal("%s", reason),
				 needs_password ?
				 errhint("The %s asks for a password: add password=... to the connection string or use a password file.", side) :
				 errhint("Check the host, port, database name, user and password of the connection string, and the %s's pg_hba.conf.", side)));
	foreach(lc, open_connections)
	{
		OpenConnection *entry = lfirst(lc);

		if (entry->conn == conn)
			entry->server = strcmp(side, "target") == 0 ? "target" : NULL;
	}
	return conn;
}

/*
 * remote_connect_replication: remote_connect, but a logical replication
 * connection (replication=database): it accepts replication commands such
 * as CREATE_REPLICATION_SLOT besides SQL.
 */
PGconn *
remote_connect_replication(const char *dsn, const char *purpose)
{
	PGconn	   *volatile conn = NULL;

	connect_replication = true;
	PG_TRY();
	{
		conn = remote_connect(dsn, purpose);
	}
	PG_FINALLY();
	{
		connect_replication = false;
	}
	PG_END_TRY();
	return conn;
}

/*
 * remote_connect_quietly: for cleanup paths, which must not throw.  Holds
 * interrupts, waits at most timeout_ms, returns NULL and *reason on failure.
 */
PGconn *
remote_connect_quietly(const char *dsn, int timeout_ms, char **reason)
{
	bool		needs_password;
	PGconn	   *conn;

	HOLD_INTERRUPTS();
	conn = try_connect(dsn, Max(timeout_ms / 1000, 1), false, reason,
					   &needs_password);
	RESUME_INTERRUPTS();
	return conn;
}

/* A failed remote step's error, copied out of its PGresult. */
typedef struct RemoteError
{
	int			code;
	char	   *primary;		/* NULL: no result, the connection broke */
	char	   *detail;
	char	   *hint;
} RemoteError;

/*
 * Copy the error of res (NULL: none) and clear res.
 */
static RemoteError *
capture_error(PGresult *res)
{
	RemoteError *err = palloc0(sizeof(RemoteError));
	char	   *sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	char	   *field;

	err->code = ERRCODE_CONNECTION_FAILURE;
	if (sqlstate && strlen(sqlstate) == 5)
		err->code = MAKE_SQLSTATE(sqlstate[0], sqlstate[1], sqlstate[2],
								  sqlstate[3], sqlstate[4]);
	if (res && (field = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)) != NULL)
		err->primary = pstrdup(field);
	if (res && (field = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL)) != NULL)
		err->detail = pstrdup(field);
	if (res && (field = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT)) != NULL)
		err->hint = pstrdup(field);
	PQclear(res);
	return err;
}

/*
 * remote_side: which server conn reaches, for messages: "source", or
 * "target" for the fallback's connections to this very server.
 */
const char *
remote_side(PGconn *conn)
{
	ListCell   *lc;

	foreach(lc, open_connections)
	{
		OpenConnection *entry = lfirst(lc);

		if (entry->conn == conn && entry->server != NULL)
			return entry->server;
	}
	return "source";
}

/* The server conn reaches, as messages name it. */
static const char *
server_of(PGconn *conn)
{
	return strcmp(remote_side(conn), "target") == 0 ? "this target" : "source server";
}

/*
 * Raise the error of a failed remote step, keeping the source's SQLSTATE and
 * message; the step is named in the context.
 */
static void
raise_remote_error(PGconn *conn, RemoteError *err, const char *step)
{
	if (err->primary == NULL)
		ereport(ERROR,
				(errcode(err->code),
				 errmsg("lost the connection to the %s during %s", server_of(conn), step),
				 errdetail_internal("%s", pchomp(PQerrorMessage(conn))),
				 errhint("Check that the %s is up and reachable, then run the command again.",
						 server_of(conn))));
	ereport(ERROR,
			(errcode(err->code),
			 errmsg_internal("%s", err->primary),
			 err->detail ? errdetail_internal("%s", err->detail) : 0,
			 err->hint ? errhint("%s", err->hint) : 0,
			 errcontext("%s, during %s", server_of(conn), step)));
}

/*
 * Raise the error of res (NULL: the connection broke); clears res first.
 */
static void
report_remote_error(PGconn *conn, PGresult *res, const char *step)
{
	raise_remote_error(conn, capture_error(res), step);
}

static void
raise_timeout(const char *step)
{
	ereport(ERROR,
			(errcode(ERRCODE_QUERY_CANCELED),
			 errmsg("timed out waiting for the source server during %s", step),
			 errdetail("The source did not answer before the deadline of the command."),
			 errhint("Check that the source server is up and not overloaded, then run the command again.")));
}

/*
 * remote_send: start a query without waiting for it; throws when the query
 * cannot be sent.  remote_receive collects its result.
 */
void
remote_send(PGconn *conn, const char *sql, const char *step)
{
	if (!PQsendQuery(conn, sql))
		report_remote_error(conn, NULL, step);
}

/*
 * remote_result_ready: read what has arrived without blocking; true once
 * remote_receive would not wait.
 */
bool
remote_result_ready(PGconn *conn, const char *step)
{
	if (!PQconsumeInput(conn))
		report_remote_error(conn, NULL, step);
	return !PQisBusy(conn);
}

static RemoteResult *
copy_result(PGresult *res)
{
	RemoteResult *out = palloc0(sizeof(RemoteResult));
	int			row;
	int			col;

	out->ntuples = PQntuples(res);
	out->nfields = PQnfields(res);
	if (out->ntuples > 0 && out->nfields > 0)
		out->values = palloc(sizeof(char *) * out->ntuples * out->nfields);
	for (row = 0; row < out->ntuples; row++)
		for (col = 0; col < out->nfields; col++)
			out->values[row * out->nfields + col] =
				PQgetisnull(res, row, col) ? NULL :
				pstrdup(PQgetvalue(res, row, col));
	return out;
}

/*
 * Wait for the results of the query in flight and return the last one,
 * copied.  A failed result raises its error (after the others are drained
 * and cleared), unless its SQLSTATE is in tolerated (ended by 0; NULL: none):
 * then NULL is returned and *code set.
 */
static RemoteResult *
receive_results(PGconn *conn, const char *step, const int *tolerated,
				int *code)
{
	RemoteError *failed = NULL;
	RemoteResult *last = NULL;

	for (;;)
	{
		PGresult   *res;

		while (PQisBusy(conn))
		{
			if (!wait_on_socket(conn, WL_SOCKET_READABLE, remote_deadline, true))
				raise_timeout(step);
			if (!PQconsumeInput(conn))
				report_remote_error(conn, NULL, step);
		}
		res = PQgetResult(conn);
		if (res == NULL)
			break;
		if (PQresultStatus(res) == PGRES_COMMAND_OK ||
			PQresultStatus(res) == PGRES_TUPLES_OK)
		{
			last = copy_result(res);
			PQclear(res);
		}
		else if (failed == NULL)
			failed = capture_error(res);
		else
			PQclear(res);
	}
	if (failed != NULL && failed->primary != NULL && tolerated != NULL)
	{
		const int  *t;

		for (t = tolerated; *t != 0; t++)
			if (*t == failed->code)
			{
				*code = failed->code;
				return NULL;
			}
	}
	if (failed != NULL)
		raise_remote_error(conn, failed, step);
	if (last == NULL)
		report_remote_error(conn, NULL, step);
	return last;
}

/*
 * remote_receive: wait for the results of the query in flight and return the
 * last one, copied.  Any failed result raises its error (after the others
 * are drained and cleared).
 */
RemoteResult *
remote_receive(PGconn *conn, const char *step)
{
	return receive_results(conn, step, NULL, NULL);
}

/*
 * remote_query: run one statement (with text parameters) and return its
 * result.  Throws the source's error with its SQLSTATE; step says which
 * step failed.  Waits interruptibly, up to the deadline if one is set.
 */
RemoteResult *
remote_query(PGconn *conn, const char *sql, int nparams,
			 const char *const *params, const char *step)
{
	if (!PQsendQueryParams(conn, sql, nparams, NULL, params, NULL, NULL, 0))
		report_remote_error(conn, NULL, step);
	return remote_receive(conn, step);
}

/*
 * remote_query_tolerating: remote_query, except that a statement failing
 * with one of the SQLSTATEs in tolerated (MAKE_SQLSTATE codes, ended by 0)
 * returns NULL and sets *code instead of raising: for a statement naming
 * objects that DDL on the source may have dropped or changed since they
 * were read.  Any other failure raises as remote_query's does.
 */
RemoteResult *
remote_query_tolerating(PGconn *conn, const char *sql, int nparams,
						const char *const *params, const char *step,
						const int *tolerated, int *code)
{
	if (!PQsendQueryParams(conn, sql, nparams, NULL, params, NULL, NULL, 0))
		report_remote_error(conn, NULL, step);
	return receive_results(conn, step, tolerated, code);
}

/*
 * remote_command: run statements whose results do not matter.
 */
void
remote_command(PGconn *conn, const char *sql, const char *step)
{
	remote_send(conn, sql, step);
	(void) remote_receive(conn, step);
}

/*
 * remote_query_quietly: for cleanup.  Never throws: holds interrupts and
 * gives up after timeout_ms.  Returns the last result, or NULL when any
 * statement failed.  After a failed statement every result is still read,
 * so the connection can run the next cleanup step; after a timeout or a
 * broken connection it cannot (close it).
 */
RemoteResult *
remote_query_quietly(PGconn *conn, const char *sql, int nparams,
					 const char *const *params, int timeout_ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   timeout_ms);
	RemoteResult *last = NULL;
	bool		ok = true;		/* false: the connection is unusable */
	bool		failed = false; /* a statement failed */

	if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
		return NULL;

	HOLD_INTERRUPTS();
	if (!(nparams > 0 ?
		  PQsendQueryParams(conn, sql, nparams, NULL, params, NULL, NULL, 0) :
		  PQsendQuery(conn, sql)))
		ok = false;
	while (ok)
	{
		PGresult   *res;

		while (ok && PQisBusy(conn))
		{
			if (!wait_on_socket(conn, WL_SOCKET_READABLE, deadline, false) ||
				!PQconsumeInput(conn))
				ok = false;
		}
		if (!ok)
			break;
		res = PQgetResult(conn);
		if (res == NULL)
			break;
		if (PQresultStatus(res) == PGRES_COMMAND_OK ||
			PQresultStatus(res) == PGRES_TUPLES_OK)
			last = copy_result(res);
		else
			failed = true;		/* read on: the connection stays usable */
		PQclear(res);
	}
	RESUME_INTERRUPTS();
	return ok && !failed ? last : NULL;
}

/*
 * remote_command_quietly: remote_query_quietly for a single statement whose
 * result does not matter; returns whether it succeeded.
 */
bool
remote_command_quietly(PGconn *conn, const char *sql, int nparams,
					   const char *const *params, int timeout_ms)
{
	return remote_query_quietly(conn, sql, nparams, params, timeout_ms) != NULL;
}

/*
 * remote_value: a field of a copied result, NULL for SQL NULL.
 */
const char *
remote_value(RemoteResult *res, int row, int col)
{
	Assert(row < res->ntuples && col < res->nfields);
	return res->values[row * res->nfields + col];
}
