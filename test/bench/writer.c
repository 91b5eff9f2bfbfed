/*-------------------------------------------------------------------------
 *
 * writer.c
 *		  Load client and timing tool of the pg_zdm benchmark (test/bench/run.sh).
 *
 * One program, several subcommands, all over libpq on loopback TCP:
 *
 *   load      an application writing at a steady rate to the source while a
 *             cutover happens (pg_zdm's, or the naive procedure done by
 *             hand), repointing to the target afterwards; it records every
 *             attempt with monotonic timestamps, computes the
 *             write-unavailability window and writes the keys of every
 *             commit the source acknowledged, for the lost-write check.
 *             For a fallback (test/bench/fallback.sh) the roles swap: the
 *             application's "source" is pg_zdm's target, where
 *             --call-conninfo runs CALL zdm.fallback(), and its "target"
 *             pg_zdm's source; --client-base keeps the keys apart from
 *             those of the cutover before it.
 *   call      run one statement (e.g. CALL zdm.cutover()), print each NOTICE
 *             with the time it arrived, and the total time.
 *   setval    one SELECT setval(...) statement per sequence, one round trip
 *             each: the baseline of the sequence step.
 *   timeq     latency of a query: one warm-up call, then N timed calls.
 *   execpoll  run a statement on one connection, then poll a query on
 *             another until it returns true: time until catch-up.
 *
 * Output is "key=value" lines on stdout that run.sh parses; problems go to
 * stderr.  Every loop is bounded by a deadline.
 *
 * Build: gcc -O2 -Wall -pthread -I$(pg_config --includedir) writer.c \
 *            -L$(pg_config --libdir) -lpq -o writer
 *
 *-------------------------------------------------------------------------
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "libpq-fe.h"

/* ------------------------------------------------------------------------
 * Small utilities
 * ------------------------------------------------------------------------ */

static int64_t t_base_us;		/* CLOCK_MONOTONIC at program start */

/* Microseconds since program start, monotonic. */
static int64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000 - t_base_us;
}

static void
sleep_us(int64_t us)
{
	struct timespec ts;

	if (us <= 0)
		return;
	ts.tv_sec = us / 1000000;
	ts.tv_nsec = (us % 1000000) * 1000;
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void
die(const char *fmt,...)
{
	va_list		ap;

	fprintf(stderr, "writer: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	exit(2);
}

static void *
xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (p == NULL)
		die("out of memory");
	return p;
}

static int
cmp_int64(const void *a, const void *b)
{
	int64_t		x = *(const int64_t *) a;
	int64_t		y = *(const int64_t *) b;

	return x < y ? -1 : x > y;
}

/* Median of n values (sorts them); -1 when n == 0. */
static int64_t
median_of(int64_t *v, size_t n)
{
	if (n == 0)
		return -1;
	qsort(v, n, sizeof(int64_t), cmp_int64);
	return v[n / 2];
}

/* Connect or die, with a message naming what the connection is for. */
static PGconn *
connect_or_die(const char *conninfo, const char *what)
{
	PGconn	   *conn = PQconnectdb(conninfo);

	if (PQstatus(conn) != CONNECTION_OK)
		die("could not connect to %s: %s", what, PQerrorMessage(conn));
	return conn;
}

/* Run sql, die unless it succeeds; returns the result (caller clears). */
static PGresult *
exec_or_die(PGconn *conn, const char *sql)
{
	PGresult   *res = PQexec(conn, sql);
	ExecStatusType st = PQresultStatus(res);

	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
		die("\"%s\" failed: %s", sql, PQerrorMessage(conn));
	return res;
}

/* ------------------------------------------------------------------------
 * load: the application and the cutover
 * ------------------------------------------------------------------------ */

typedef enum
{
	K_PERSISTENT,				/* one connection, autocommit INSERT */
	K_RECONNECT,				/* a new connection for every transaction */
	K_LONG						/* BEGIN; 3 statements with pauses; COMMIT */
} ClientKind;

static const char *const kind_name[] = {"persistent", "reconnect", "long"};
static const char *const kind_table[] = {"bench_persistent", "bench_reconnect", "bench_long"};

/* One transaction attempt. */
typedef struct Attempt
{
	int64_t		t0;				/* started (before connecting, if it had to) */
	int64_t		t1;				/* ended: acknowledged or failed */
	int64_t		seq;			/* key of the row(s) it wrote */
	char		server;			/* 'S' source, 'T' target */
	bool		ok;				/* the server acknowledged the commit */
	char		sqlstate[6];
} Attempt;

typedef struct Client
{
	int			id;				/* key prefix, unique per run */
	ClientKind	kind;
	int64_t		period_us;		/* steady rate: one attempt per period */
	int64_t		long_us;		/* K_LONG: duration of the transaction */
	char		server;
	PGconn	   *conn;
	bool		source_refused; /* its last attempt on the source failed */
	int64_t		seq;
	Attempt    *att;
	size_t		natt;
	size_t		cap;
	char		first_target_error[256];
	volatile bool back;			/* has had a commit on the target */
	pthread_t	thread;
} Client;

/* Options of load. */
static const char *opt_source;
static const char *opt_target;
static const char *opt_cutover = "zdm";	/* zdm | naive */
static const char *opt_out = ".";
static const char *opt_naive_sub = "naive_sub";
static const char *opt_zdm_call = "CALL zdm.cutover()";
static const char *opt_call_conninfo;	/* where opt_zdm_call runs: --target */
static int	opt_client_base = 0;	/* added to every client id */
static int	opt_n[3] = {4, 4, 4};
static double opt_rate[3] = {80, 35, 10};
static int	opt_long_ms = 75;
static int	opt_warmup_ms = 3000;
static int	opt_after_ms = 1500;
static int	opt_seq_buffer = 5000;
static int	opt_max_s = 180;
static int	opt_stall_ms = 200;

/* Shared between the clients and the driver. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv;
static volatile bool stop_all = false;
static volatile bool cutover_returned = false;

/* What the driver saw, with times. */
typedef struct Mark
{
	int64_t		t;
	char		text[512];
} Mark;

static Mark marks[256];
static int	nmarks;
static int64_t t_call = -1;		/* cutover started */
static double t_call_epoch;		/* the same moment, wall clock (s since 1970) */
static int64_t t_return = -1;	/* cutover returned */
static char cutover_error[1024];

static void
add_mark(int64_t t, const char *fmt,...)
{
	va_list		ap;
	Mark	   *m;

	if (nmarks >= (int) (sizeof(marks) / sizeof(marks[0])))
		return;
	m = &marks[nmarks++];
	m->t = t;
	va_start(ap, fmt);
	vsnprintf(m->text, sizeof(m->text), fmt, ap);
	va_end(ap);
	/* one line per mark */
	for (char *p = m->text; *p; p++)
		if (*p == '\n' || *p == '\t')
			*p = ' ';
}

static void
notice_to_mark(void *arg, const char *message)
{
	char		buf[512];
	size_t		len;

	snprintf(buf, sizeof(buf), "%s", message);
	len = strlen(buf);
	while (len > 0 && buf[len - 1] == '\n')
		buf[--len] = '\0';
	add_mark(now_us(), "%s", buf);
}

/* Wall-clock time in seconds, to line up with server timestamps. */
static double
epoch_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
abs_deadline(struct timespec *ts, int64_t t_us)
{
	int64_t		abs_us = t_us + t_base_us;

	ts->tv_sec = abs_us / 1000000;
	ts->tv_nsec = (abs_us % 1000000) * 1000;
}

/*
 * Sleep until time t (program clock), or until the cutover returns when
 * wake_on_cutover, or until stop.
 */
static void
wait_until(int64_t t, bool wake_on_cutover)
{
	struct timespec ts;

	abs_deadline(&ts, t);
	pthread_mutex_lock(&mu);
	while (!stop_all && now_us() < t && !(wake_on_cutover && cutover_returned))
		pthread_cond_timedwait(&cv, &mu, &ts);
	pthread_mutex_unlock(&mu);
}

/*
 * Run one statement for attempt a; on failure fill a->sqlstate and return
 * false.  The connection may be broken afterwards.
 */
static bool
step(Client *c, Attempt *a, const char *sql, int nparams, const char *const *params)
{
	PGresult   *res = PQexecParams(c->conn, sql, nparams, NULL, params, NULL, NULL, 0);
	ExecStatusType st = PQresultStatus(res);
	bool		ok = (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK);

	if (ok && strcmp(sql, "COMMIT") == 0 && strcmp(PQcmdStatus(res), "COMMIT") != 0)
	{
		ok = false;				/* COMMIT of an aborted transaction: ROLLBACK */
		strcpy(a->sqlstate, "40000");
	}
	else if (!ok)
	{
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

		snprintf(a->sqlstate, sizeof(a->sqlstate), "%s",
				 state ? state : (PQstatus(c->conn) == CONNECTION_BAD ? "08006" : "XX000"));
		if (a->server == 'T' && c->first_target_error[0] == '\0')
			snprintf(c->first_target_error, sizeof(c->first_target_error), "%s %s",
					 a->sqlstate, PQerrorMessage(c->conn));
	}
	PQclear(res);
	return ok;
}

/* One transaction of client c on its current server. */
static bool
transaction(Client *c, Attempt *a)
{
	char		id[16];
	char		seq[24];
	const char *params[2] = {id, seq};
	char		sql[256];
	bool		ok;

	snprintf(id, sizeof(id), "%d", c->id);
	snprintf(seq, sizeof(seq), "%" PRId64, a->seq);

	if (c->kind == K_RECONNECT || c->conn == NULL || PQstatus(c->conn) != CONNECTION_OK)
	{
		if (c->conn != NULL)
			PQfinish(c->conn);
		c->conn = PQconnectdb(c->server == 'S' ? opt_source : opt_target);
		if (PQstatus(c->conn) != CONNECTION_OK)
		{
			strcpy(a->sqlstate, "08001");
			if (a->server == 'T' && c->first_target_error[0] == '\0')
				snprintf(c->first_target_error, sizeof(c->first_target_error), "08001 %s",
						 PQerrorMessage(c->conn));
			PQfinish(c->conn);
			c->conn = NULL;
			return false;
		}
	}

	if (c->kind != K_LONG)
	{
		snprintf(sql, sizeof(sql),
				 "INSERT INTO %s (client, seq) VALUES ($1, $2)", kind_table[c->kind]);
		ok = step(c, a, sql, 2, params);
	}
	else
	{
		int64_t		pause = c->long_us / 3;

		ok = step(c, a, "BEGIN", 0, NULL) &&
			step(c, a, "INSERT INTO bench_long (client, seq, part, note) VALUES ($1, $2, 1, 'a')", 2, params) &&
			(sleep_us(pause), true) &&
			step(c, a, "UPDATE bench_long SET note = 'b' WHERE client = $1 AND seq = $2 AND part = 1", 2, params) &&
			(sleep_us(pause), true) &&
			step(c, a, "INSERT INTO bench_long (client, seq, part, note) VALUES ($1, $2, 2, 'b')", 2, params) &&
			(sleep_us(pause), true) &&
			step(c, a, "COMMIT", 0, NULL);
		if (!ok && PQstatus(c->conn) == CONNECTION_OK)
			PQclear(PQexec(c->conn, "ROLLBACK"));
	}

	if (c->kind == K_RECONNECT)
	{
		PQfinish(c->conn);
		c->conn = NULL;
	}
	return ok;
}

static void *
client_main(void *arg)
{
	Client	   *c = arg;
	int64_t		next = now_us() + (int64_t) (drand48() * c->period_us);

	while (!stop_all)
	{
		Attempt    *a;

		/* Repoint once the source refused us and the cutover is over. */
		if (!(c->server == 'S' && c->source_refused && cutover_returned))
			wait_until(next, c->server == 'S' && c->source_refused);
		if (stop_all)
			break;
		if (c->server == 'S' && c->source_refused && cutover_returned)
		{
			if (c->conn != NULL)
				PQfinish(c->conn);
			c->conn = NULL;
			c->server = 'T';
		}

		if (c->natt == c->cap)
		{
			c->cap = c->cap ? c->cap * 2 : 1024;
			c->att = xrealloc(c->att, c->cap * sizeof(Attempt));
		}
		a = &c->att[c->natt];
		memset(a, 0, sizeof(*a));
		a->server = c->server;
		a->seq = ++c->seq;		/* a fresh key for every attempt */
		a->t0 = now_us();
		a->ok = transaction(c, a);
		a->t1 = now_us();
		c->natt++;

		if (c->server == 'S')
			c->source_refused = !a->ok;
		else if (a->ok)
			c->back = true;

		next += c->period_us;
		if (next < a->t1)
			next = a->t1;		/* late: go on at once, no burst to catch up */
	}
	if (c->conn != NULL)
		PQfinish(c->conn);
	return NULL;
}

/*
 * pg_zdm's cutover: one CALL on the target (or on --call-conninfo), NOTICEs
 * recorded as they come.
 */
static void
cutover_zdm(void)
{
	PGconn	   *conn = connect_or_die(opt_call_conninfo ? opt_call_conninfo : opt_target,
									  "the server of the call");
	PGresult   *res;

	PQsetNoticeProcessor(conn, notice_to_mark, NULL);
	t_call = now_us();
	t_call_epoch = epoch_now();
	add_mark(t_call, "%s", opt_zdm_call);
	res = PQexec(conn, opt_zdm_call);
	t_return = now_us();
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		snprintf(cutover_error, sizeof(cutover_error), "%s", PQerrorMessage(conn));
	PQclear(res);
	PQfinish(conn);
}

/*
 * The naive procedure, as a simple migration script does it: read-only by
 * configuration, the source's WAL position, poll the subscriber once a
 * second, one setval per sequence, drop the subscription.
 */
static void
cutover_naive(void)
{
	PGconn	   *src = connect_or_die(opt_source, "the source");
	PGconn	   *tgt = connect_or_die(opt_target, "the target");
	PGresult   *res;
	char		lsn[64];
	char		sql[1024];
	int			polls;
	bool		caught_up = false;

	t_call = now_us();
	t_call_epoch = epoch_now();
	PQclear(exec_or_die(src, "ALTER SYSTEM SET default_transaction_read_only = on"));
	PQclear(exec_or_die(src, "SELECT pg_reload_conf()"));
	add_mark(now_us(), "ALTER SYSTEM SET default_transaction_read_only = on; pg_reload_conf() done");
	res = exec_or_die(src, "SELECT pg_current_wal_lsn()");
	snprintf(lsn, sizeof(lsn), "%s", PQgetvalue(res, 0, 0));
	PQclear(res);
	add_mark(now_us(), "source pg_current_wal_lsn() = %s", lsn);

	snprintf(sql, sizeof(sql),
			 "SELECT coalesce(latest_end_lsn >= '%s'::pg_lsn, false), latest_end_lsn "
			 "FROM pg_stat_subscription WHERE subname = '%s' AND relid IS NULL",
			 lsn, opt_naive_sub);
	for (polls = 1; polls <= 120; polls++)
	{
		res = exec_or_die(tgt, sql);
		caught_up = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
		add_mark(now_us(), "poll %d: latest_end_lsn %s", polls,
				 PQntuples(res) == 1 ? PQgetvalue(res, 0, 1) : "(no row)");
		PQclear(res);
		if (caught_up)
			break;
		sleep_us(1000000);
	}
	if (!caught_up)
		add_mark(now_us(), "gave up waiting after %d polls", polls - 1);

	res = exec_or_die(src,
					  "SELECT format('%I.%I', schemaname, sequencename), last_value "
					  "FROM pg_sequences WHERE last_value IS NOT NULL");
	for (int i = 0; i < PQntuples(res); i++)
	{
		snprintf(sql, sizeof(sql), "SELECT setval('%s', %s + %d)",
				 PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), opt_seq_buffer);
		PQclear(exec_or_die(tgt, sql));
	}
	add_mark(now_us(), "%d sequences set one by one", PQntuples(res));
	PQclear(res);

	snprintf(sql, sizeof(sql), "DROP SUBSCRIPTION %s", opt_naive_sub);
	PQclear(exec_or_die(tgt, sql));
	t_return = now_us();
	add_mark(t_return, "subscription dropped");
	PQfinish(src);
	PQfinish(tgt);
}

/* True when every client has had a commit on the target. */
static bool
all_on_target(Client *clients, int n)
{
	for (int i = 0; i < n; i++)
		if (!clients[i].back)
			return false;
	return true;
}

static void
write_outputs(Client *clients, int n)
{
	char		path[4096];
	FILE	   *acked;
	FILE	   *attempts;
	FILE	   *fmarks;

	snprintf(path, sizeof(path), "%s/acked.tsv", opt_out);
	if ((acked = fopen(path, "w")) == NULL)
		die("cannot write %s", path);
	snprintf(path, sizeof(path), "%s/attempts.tsv", opt_out);
	if ((attempts = fopen(path, "w")) == NULL)
		die("cannot write %s", path);
	snprintf(path, sizeof(path), "%s/marks.tsv", opt_out);
	if ((fmarks = fopen(path, "w")) == NULL)
		die("cannot write %s", path);

	fprintf(attempts, "client\tkind\tseq\tserver\tt0_us\tt1_us\tok\tsqlstate\n");
	for (int i = 0; i < n; i++)
	{
		Client	   *c = &clients[i];

		for (size_t j = 0; j < c->natt; j++)
		{
			Attempt    *a = &c->att[j];

			fprintf(attempts, "%d\t%s\t%" PRId64 "\t%c\t%" PRId64 "\t%" PRId64 "\t%d\t%s\n",
					c->id, kind_name[c->kind], a->seq, a->server, a->t0 - t_call,
					a->t1 - t_call, a->ok, a->sqlstate);
			if (a->ok && a->server == 'S')
				fprintf(acked, "%s\t%d\t%" PRId64 "\n", kind_table[c->kind], c->id, a->seq);
		}
	}
	for (int i = 0; i < nmarks; i++)
		fprintf(fmarks, "%.1f\t%s\n", (marks[i].t - t_call) / 1000.0, marks[i].text);
	fclose(acked);
	fclose(attempts);
	fclose(fmarks);
}

/*
 * The figures of one run, as key=value lines.  Times in ms; "+x" times are
 * relative to the start of the window.
 *
 * Window start: the earliest start of a source attempt that did not
 * complete normally, i.e. that failed, or that succeeded more than
 * opt_stall_ms later than the median duration of its kind before the
 * cutover (a stall).  Window end: the earliest acknowledged commit on the
 * target.
 */
static void
report(Client *clients, int n)
{
	int64_t		median_kind[3];
	int64_t		w_start = INT64_MAX;
	int64_t		w_end = INT64_MAX;
	int64_t		last_back = -1;
	int64_t		worst_gap = -1;
	long		acked = 0, target_ok = 0, src_fail = 0, pre_fail = 0,
				stalled_ok = 0, target_fail = 0;
	int			clients_back = 0;
	char		states[256] = "";

	for (int k = 0; k < 3; k++)
	{
		int64_t    *d = NULL;
		size_t		nd = 0;

		for (int i = 0; i < n; i++)
			for (size_t j = 0; j < clients[i].natt; j++)
			{
				Attempt    *a = &clients[i].att[j];

				if (clients[i].kind == (ClientKind) k && a->ok && a->server == 'S' && a->t1 < t_call)
				{
					d = xrealloc(d, (nd + 1) * sizeof(int64_t));
					d[nd++] = a->t1 - a->t0;
				}
			}
		median_kind[k] = median_of(d, nd);
		free(d);
		printf("median_latency_%s_ms=%.2f\n", kind_name[k], median_kind[k] / 1000.0);
	}

	for (int i = 0; i < n; i++)
	{
		Client	   *c = &clients[i];
		int64_t		c_start = INT64_MAX;
		int64_t		c_back = -1;

		for (size_t j = 0; j < c->natt; j++)
		{
			Attempt    *a = &c->att[j];
			bool		stalled = a->ok && a->server == 'S' &&
				(a->t1 - a->t0) > median_kind[c->kind] + opt_stall_ms * 1000;

			if (a->server == 'S')
			{
				if (a->ok)
					acked++;
				if (!a->ok)
				{
					src_fail++;
					if (a->t0 < t_call)
						pre_fail++;
					if (strstr(states, a->sqlstate) == NULL && strlen(states) < 200)
						snprintf(states + strlen(states), sizeof(states) - strlen(states),
								 "%s%s", states[0] ? "," : "", a->sqlstate);
				}
				if (stalled)
					stalled_ok++;
				if ((!a->ok || stalled) && a->t0 < c_start)
					c_start = a->t0;
			}
			else if (a->ok)
			{
				target_ok++;
				if (c_back < 0)
					c_back = a->t1;
			}
			else
				target_fail++;
		}
		if (c_start < w_start)
			w_start = c_start;
		if (c_back >= 0)
		{
			clients_back++;
			if (c_back < w_end)
				w_end = c_back;
			if (c_back > last_back)
				last_back = c_back;
			if (c_start != INT64_MAX && c_back - c_start > worst_gap)
				worst_gap = c_back - c_start;
		}
		if (c->first_target_error[0])
			fprintf(stderr, "writer: client %d (%s) first error on the target: %s",
					c->id, kind_name[c->kind], c->first_target_error);
	}

	printf("cutover=%s\n", opt_cutover);
	printf("cutover_call_ms=%.1f\n", (t_return - t_call) / 1000.0);
	printf("cutover_error=%s\n", cutover_error[0] ? "yes" : "no");
	if (cutover_error[0])
	{
		for (char *p = cutover_error; *p; p++)
			if (*p == '\n')
				*p = ' ';
		printf("cutover_error_text=%s\n", cutover_error);
	}
	printf("source_acked=%ld\n", acked);
	printf("source_failed=%ld\n", src_fail);
	printf("source_failed_sqlstates=%s\n", states[0] ? states : "none");
	printf("source_failed_before_cutover=%ld\n", pre_fail);
	printf("source_stalled_but_acked=%ld\n", stalled_ok);
	printf("target_ok=%ld\n", target_ok);
	printf("target_failed=%ld\n", target_fail);
	printf("clients=%d\n", n);
	printf("clients_on_target=%d\n", clients_back);
	if (w_start == INT64_MAX || w_end == INT64_MAX)
	{
		printf("window_ms=NA\n");
		return;
	}
	printf("window_ms=%.1f\n", (w_end - w_start) / 1000.0);
	printf("window_start_after_call_ms=%.1f\n", (w_start - t_call) / 1000.0);
	printf("window_start_epoch=%.6f\n", t_call_epoch + (w_start - t_call) / 1e6);
	printf("cutover_return_in_window_ms=%.1f\n", (t_return - w_start) / 1000.0);
	printf("last_client_back_in_window_ms=%.1f\n", (last_back - w_start) / 1000.0);
	printf("worst_client_gap_ms=%.1f\n", worst_gap / 1000.0);
	for (int i = 0; i < nmarks; i++)
		printf("mark=%+.1f ms: %s\n", (marks[i].t - w_start) / 1000.0, marks[i].text);
}

static int
cmd_load(int argc, char **argv)
{
	Client	   *clients;
	int			n = 0;
	pthread_condattr_t ca;
	int64_t		t_stop;

	for (int i = 0; i < argc; i++)
	{
		const char *o = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (v == NULL)
			die("option %s needs a value", o);
		i++;
		if (strcmp(o, "--source") == 0)
			opt_source = v;
		else if (strcmp(o, "--target") == 0)
			opt_target = v;
		else if (strcmp(o, "--cutover") == 0)
			opt_cutover = v;
		else if (strcmp(o, "--out") == 0)
			opt_out = v;
		else if (strcmp(o, "--naive-subscription") == 0)
			opt_naive_sub = v;
		else if (strcmp(o, "--zdm-call") == 0)
			opt_zdm_call = v;
		else if (strcmp(o, "--call-conninfo") == 0)
			opt_call_conninfo = v;
		else if (strcmp(o, "--client-base") == 0)
			opt_client_base = atoi(v);
		else if (strcmp(o, "--persistent") == 0)
			sscanf(v, "%d:%lf", &opt_n[K_PERSISTENT], &opt_rate[K_PERSISTENT]);
		else if (strcmp(o, "--reconnect") == 0)
			sscanf(v, "%d:%lf", &opt_n[K_RECONNECT], &opt_rate[K_RECONNECT]);
		else if (strcmp(o, "--long") == 0)
			sscanf(v, "%d:%lf:%d", &opt_n[K_LONG], &opt_rate[K_LONG], &opt_long_ms);
		else if (strcmp(o, "--warmup-ms") == 0)
			opt_warmup_ms = atoi(v);
		else if (strcmp(o, "--after-ms") == 0)
			opt_after_ms = atoi(v);
		else if (strcmp(o, "--seq-buffer") == 0)
			opt_seq_buffer = atoi(v);
		else if (strcmp(o, "--stall-ms") == 0)
			opt_stall_ms = atoi(v);
		else if (strcmp(o, "--max-seconds") == 0)
			opt_max_s = atoi(v);
		else
			die("unknown option %s", o);
	}
	if (opt_source == NULL || opt_target == NULL)
		die("load needs --source and --target");
	if (strcmp(opt_cutover, "zdm") != 0 && strcmp(opt_cutover, "naive") != 0)
		die("--cutover must be zdm or naive");
	/* the whole run is bounded, whatever the servers do */
	alarm(opt_max_s);

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&cv, &ca);
	srand48(getpid());

	clients = calloc(opt_n[0] + opt_n[1] + opt_n[2], sizeof(Client));
	for (int k = 0; k < 3; k++)
		for (int i = 0; i < opt_n[k]; i++)
		{
			Client	   *c = &clients[n];

			c->id = opt_client_base + 100 * (k + 1) + i;
			c->kind = (ClientKind) k;
			c->period_us = (int64_t) (1e6 / opt_rate[k]);
			c->long_us = (int64_t) opt_long_ms * 1000;
			c->server = 'S';
			n++;
		}
	for (int i = 0; i < n; i++)
		if (pthread_create(&clients[i].thread, NULL, client_main, &clients[i]) != 0)
			die("pthread_create failed");

	sleep_us((int64_t) opt_warmup_ms * 1000);
	if (strcmp(opt_cutover, "zdm") == 0)
		cutover_zdm();
	else
		cutover_naive();

	pthread_mutex_lock(&mu);
	cutover_returned = true;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);

	/* go on writing to the target for a while, and until every client is back */
	t_stop = t_return + (int64_t) opt_after_ms * 1000;
	while (now_us() < t_stop ||
		   (!all_on_target(clients, n) && now_us() < t_return + 15 * 1000000LL))
		sleep_us(10000);

	pthread_mutex_lock(&mu);
	stop_all = true;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
	for (int i = 0; i < n; i++)
		pthread_join(clients[i].thread, NULL);

	write_outputs(clients, n);
	report(clients, n);
	return cutover_error[0] ? 1 : 0;
}

/* ------------------------------------------------------------------------
 * The other subcommands
 * ------------------------------------------------------------------------ */

static void
notice_to_stdout(void *arg, const char *message)
{
	int64_t		t0 = *(int64_t *) arg;

	printf("notice=%.1f ms: %s", (now_us() - t0) / 1000.0, message);
	if (message[0] && message[strlen(message) - 1] != '\n')
		printf("\n");
	fflush(stdout);
}

/* call CONNINFO SQL */
static int
cmd_call(int argc, char **argv)
{
	PGconn	   *conn;
	PGresult   *res;
	int64_t		t0;
	int			rc = 0;

	if (argc != 2)
		die("usage: call CONNINFO SQL");
	conn = connect_or_die(argv[0], "the server");
	t0 = now_us();
	PQsetNoticeProcessor(conn, notice_to_stdout, &t0);
	res = PQexec(conn, argv[1]);
	printf("elapsed_ms=%.1f\n", (now_us() - t0) / 1000.0);
	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		fprintf(stderr, "writer: %s failed: %s", argv[1], PQerrorMessage(conn));
		rc = 1;
	}
	PQclear(res);
	PQfinish(conn);
	return rc;
}

/* setval CONNINFO FORMAT COUNT VALUE: setval(format % i, VALUE) for i in 1..COUNT */
static int
cmd_setval(int argc, char **argv)
{
	PGconn	   *conn;
	int			count;
	int64_t		t0;
	char		name[256];
	char		sql[512];

	if (argc != 4)
		die("usage: setval CONNINFO NAME_FORMAT COUNT VALUE");
	conn = connect_or_die(argv[0], "the server");
	count = atoi(argv[2]);
	t0 = now_us();
	for (int i = 1; i <= count; i++)
	{
		snprintf(name, sizeof(name), argv[1], i);
		snprintf(sql, sizeof(sql), "SELECT setval('%s', %s)", name, argv[3]);
		PQclear(exec_or_die(conn, sql));
	}
	printf("elapsed_ms=%.1f\n", (now_us() - t0) / 1000.0);
	printf("statements=%d\n", count);
	PQfinish(conn);
	return 0;
}

/* timeq CONNINFO SQL N: one warm-up call, then N timed calls */
static int
cmd_timeq(int argc, char **argv)
{
	PGconn	   *conn;
	int			n;
	int64_t    *d;
	int64_t		t0;
	int64_t		first;
	int			rows = 0;

	if (argc != 3)
		die("usage: timeq CONNINFO SQL N");
	conn = connect_or_die(argv[0], "the server");
	n = atoi(argv[2]);
	if (n < 1)
		die("N must be positive");
	d = calloc(n, sizeof(int64_t));
	t0 = now_us();
	PQclear(exec_or_die(conn, argv[1]));
	first = now_us() - t0;
	for (int i = 0; i < n; i++)
	{
		PGresult   *res;

		t0 = now_us();
		res = exec_or_die(conn, argv[1]);
		d[i] = now_us() - t0;
		rows = PQntuples(res);
		PQclear(res);
	}
	qsort(d, n, sizeof(int64_t), cmp_int64);
	printf("first_ms=%.2f\n", first / 1000.0);
	printf("median_ms=%.2f\n", d[n / 2] / 1000.0);
	printf("p90_ms=%.2f\n", d[(n * 9) / 10 < n ? (n * 9) / 10 : n - 1] / 1000.0);
	printf("max_ms=%.2f\n", d[n - 1] / 1000.0);
	printf("min_ms=%.2f\n", d[0] / 1000.0);
	printf("rows=%d\n", rows);
	PQfinish(conn);
	return 0;
}

/*
 * execpoll CONN1 SQL1 CONN2 SQL2 TIMEOUT_S INTERVAL_MS: run SQL1, then poll
 * SQL2 until its first column is true.  If SQL2 has a second boolean column,
 * the first time it is true is reported as started_ms.
 */
static int
cmd_execpoll(int argc, char **argv)
{
	PGconn	   *c1;
	PGconn	   *c2;
	int64_t		t0;
	int64_t		deadline;
	int64_t		interval;
	int			polls = 0;
	int64_t		started = -1;

	if (argc != 6)
		die("usage: execpoll CONN1 SQL1 CONN2 SQL2 TIMEOUT_S INTERVAL_MS");
	c1 = connect_or_die(argv[0], "the first server");
	c2 = connect_or_die(argv[2], "the second server");
	interval = (int64_t) atoi(argv[5]) * 1000;
	t0 = now_us();
	deadline = t0 + (int64_t) atoi(argv[4]) * 1000000;
	PQclear(exec_or_die(c1, argv[1]));
	for (;;)
	{
		PGresult   *res = exec_or_die(c2, argv[3]);
		bool		done = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;

		if (started < 0 && PQntuples(res) == 1 &&
			(done || (PQnfields(res) > 1 && strcmp(PQgetvalue(res, 0, 1), "t") == 0)))
			started = now_us() - t0;
		PQclear(res);
		polls++;
		if (done)
			break;
		if (now_us() > deadline)
		{
			printf("elapsed_ms=NA\n");
			fprintf(stderr, "writer: \"%s\" did not become true within %s s\n", argv[3], argv[4]);
			return 1;
		}
		sleep_us(interval);
	}
	printf("elapsed_ms=%.1f\n", (now_us() - t0) / 1000.0);
	printf("started_ms=%.1f\n", started / 1000.0);
	printf("polls=%d\n", polls);
	PQfinish(c1);
	PQfinish(c2);
	return 0;
}

int
main(int argc, char **argv)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	t_base_us = (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);

	if (argc < 2)
		die("usage: writer load|call|setval|timeq|execpoll ...");
	/* no subcommand may hang the benchmark; load sets its own bound */
	alarm(900);
	if (strcmp(argv[1], "load") == 0)
		return cmd_load(argc - 2, argv + 2);
	if (strcmp(argv[1], "call") == 0)
		return cmd_call(argc - 2, argv + 2);
	if (strcmp(argv[1], "setval") == 0)
		return cmd_setval(argc - 2, argv + 2);
	if (strcmp(argv[1], "timeq") == 0)
		return cmd_timeq(argc - 2, argv + 2);
	if (strcmp(argv[1], "execpoll") == 0)
		return cmd_execpoll(argc - 2, argv + 2);
	die("unknown subcommand %s", argv[1]);
	return 2;
}
