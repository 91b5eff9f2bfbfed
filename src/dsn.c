/*-------------------------------------------------------------------------
 *
 * dsn.c
 *		  Source connection strings: validation, masking, and keeping the
 *		  password out of every message pg_zdm causes.
 *
 * The password reaches this backend as part of a CALL's text.  Our own
 * messages never quote a connection string, but PostgreSQL logs the text of
 * a statement that fails (log_min_error_statement = error by default), and
 * that text holds the password.  So every password seen here is remembered
 * for the life of the backend, and an emit_log_hook hides the STATEMENT line
 * of any message whose statement or text contains one, or whose statement
 * calls zdm with something that looks like a password.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "tcop/tcopprot.h"
#include "utils/elog.h"
#include "utils/memutils.h"

#include "pg_zdm.h"

/* Timeout applied when the DSN sets no connect_timeout of its own. */
#define DEFAULT_CONNECT_TIMEOUT_S	10

/* Passwords seen by this backend, in TopMemoryContext. */
static List *known_secrets = NIL;

static emit_log_hook_type prev_emit_log_hook = NULL;

/*
 * Remember a secret so that the log filter can recognise it.
 */
static void
remember_secret(const char *secret)
{
	MemoryContext oldcxt;
	ListCell   *lc;

	if (secret == NULL || secret[0] == '\0')
		return;
	foreach(lc, known_secrets)
	{
		if (strcmp((char *) lfirst(lc), secret) == 0)
			return;
	}
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	known_secrets = lappend(known_secrets, pstrdup(secret));
	MemoryContextSwitchTo(oldcxt);
}

static bool
contains_secret(const char *text)
{
	ListCell   *lc;

	if (text == NULL)
		return false;
	foreach(lc, known_secrets)
	{
		if (strstr(text, (char *) lfirst(lc)) != NULL)
			return true;
	}
	return false;
}

/*
 * Could this statement carry a connection string with a password?  A call of
 * ours whose text holds a password keyword or a URI with credentials.  This
 * catches what fails before our code ever saw the DSN (a permission error).
 */
static bool
statement_may_hold_password(const char *text)
{
	const char *uri;

	if (text == NULL || strcasestr(text, "zdm") == NULL)
		return false;
	if (strcasestr(text, "password") != NULL)
		return true;
	uri = strstr(text, "://");
	return uri != NULL && strchr(uri, '@') != NULL;
}

/*
 * emit_log_hook: never let a password reach the client or the log.  The
 * statement line of a call that may hold one is hidden, a logged statement
 * text replaced, and a message part that would quote a remembered password
 * (none of ours does, but libpq or the server might) withheld.
 */
static void
zdm_emit_log_hook(ErrorData *edata)
{
	if (statement_may_hold_password(debug_query_string))
		edata->hide_stmt = true;
	/* log_statement logs the text itself, before any of our code runs */
	if (statement_may_hold_password(edata->message) &&
		(strncmp(edata->message, "statement: ", 11) == 0 ||
		 strncmp(edata->message, "duration: ", 10) == 0))
		edata->message = pstrdup("statement: (a call of pg_zdm withheld: it holds a password)");
	if (known_secrets != NIL)
	{
		if (contains_secret(debug_query_string) ||
			contains_secret(edata->internalquery))
		{
			edata->hide_stmt = true;
			edata->internalquery = NULL;
		}
		if (contains_secret(edata->message))
			edata->message = pstrdup("message withheld: it quoted the source password");
		if (contains_secret(edata->detail))
			edata->detail = pstrdup("Detail withheld: it quoted the source password.");
		if (contains_secret(edata->context))
			edata->context = NULL;
		if (contains_secret(edata->hint))
			edata->hint = NULL;
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

void
dsn_install_log_filter(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = zdm_emit_log_hook;
}

/*
 * A malformed DSN cannot be parsed to find its password; libpq's complaint
 * may quote a piece of it.  Remember whatever follows "password=" in the raw
 * text, so that the log filter withholds it.
 */
static void
remember_raw_password(const char *dsn)
{
	const char *p = dsn;

	while ((p = strstr(p, "password")) != NULL)
	{
		const char *start;
		const char *end;

		p += strlen("password");
		while (*p == ' ')
			p++;
		if (*p != '=')
			continue;
		p++;
		while (*p == ' ')
			p++;
		if (*p == '\'')
			p++;
		start = p;
		end = start;
		while (*end && *end != ' ' && *end != '\'')
			end++;
		if (end > start)
			remember_secret(pnstrdup(start, end - start));
	}
	/* a URI's password: postgresql://user:secret@host */
	if ((p = strstr(dsn, "://")) != NULL)
	{
		const char *at = strchr(p + 3, '@');
		const char *colon = strchr(p + 3, ':');

		if (at && colon && colon < at)
			remember_secret(pnstrdup(colon + 1, at - colon - 1));
	}
}

/*
 * dsn_validate: check that a DSN is usable and return it unchanged; side
 * is "source" or "target", the server it names, for the messages.
 *
 * NULL, empty, malformed or with unknown keywords: an ERROR that shows
 * libpq's complaint but never the DSN.  Its password is remembered for the
 * log filter.
 */
char *
dsn_validate(const char *dsn, const char *side)
{
	PQconninfoOption *opts;
	PQconninfoOption *opt;
	char	   *err = NULL;

	if (dsn == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s connection string must not be null", side),
				 errhint("Pass a libpq connection string such as 'host=old.example dbname=app user=repl'.")));

	remember_raw_password(dsn);

	if (dsn[strspn(dsn, " \t\r\n")] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s connection string is empty", side),
				 errdetail("An empty string would connect to the defaults of this server's clients, which are not necessarily the %s.", side),
				 errhint("Pass a libpq connection string such as 'host=old.example dbname=app user=repl'.")));

	opts = PQconninfoParse(dsn, &err);
	if (opts == NULL)
	{
		char	   *msg = err ? pchomp(err) : pstrdup("out of memory");

		if (err)
			PQfreemem(err);
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("invalid %s connection string", side),
				 errdetail_internal("%s", msg),
				 errhint("Use libpq keyword=value pairs or a postgresql:// URI; see \"Connection Strings\" in the PostgreSQL documentation.")));
	}

	for (opt = opts; opt->keyword != NULL; opt++)
	{
		if (opt->val != NULL && strchr(opt->dispchar, '*') != NULL)
			remember_secret(opt->val);
	}
	PQconninfoFree(opts);

	return pstrdup(dsn);
}

/*
 * dsn_append_value: a value of a connection string, quoted as libpq reads
 * it: in single quotes, with quotes and backslashes escaped by a backslash.
 */
void
dsn_append_value(StringInfo buf, const char *value)
{
	const char *c;

	appendStringInfoChar(buf, '\'');
	for (c = value; *c; c++)
	{
		if (*c == '\'' || *c == '\\')
			appendStringInfoChar(buf, '\\');
		appendStringInfoChar(buf, *c);
	}
	appendStringInfoChar(buf, '\'');
}

/*
 * dsn_is_local: does the DSN reach a server on this machine (a socket
 * directory, the default socket, or a loopback address)?  Only what it
 * says; a host name that resolves to this machine is not known to be.
 */
bool
dsn_is_local(const char *dsn)
{
	PQconninfoOption *opts = PQconninfoParse(dsn, NULL);
	PQconninfoOption *opt;
	bool		local = true;

	for (opt = opts; opt && opt->keyword != NULL; opt++)
	{
		const char *v = opt->val;

		if ((strcmp(opt->keyword, "host") != 0 &&
			 strcmp(opt->keyword, "hostaddr") != 0) || v == NULL || v[0] == '\0')
			continue;
		if (v[0] != '/' && v[0] != '@' && strcmp(v, "localhost") != 0 &&
			strncmp(v, "127.", 4) != 0 && strcmp(v, "::1") != 0)
			local = false;
	}
	PQconninfoFree(opts);
	return local;
}

/*
 * dsn_mask: the DSN rebuilt for display, every secret field (those libpq
 * marks with dispchar '*', i.e. the password) replaced by ********.  The
 * DSN must have been validated.
 */
char *
dsn_mask(const char *dsn)
{
	PQconninfoOption *opts;
	PQconninfoOption *opt;
	StringInfoData buf;

	opts = PQconninfoParse(dsn, NULL);
	if (opts == NULL)
		return pstrdup("(invalid connection string)");

	initStringInfo(&buf);
	for (opt = opts; opt->keyword != NULL; opt++)
	{
		if (opt->val == NULL || opt->val[0] == '\0' ||
			strchr(opt->dispchar, 'D') != NULL)
			continue;
		if (buf.len > 0)
			appendStringInfoChar(&buf, ' ');
		appendStringInfo(&buf, "%s=", opt->keyword);
		if (strchr(opt->dispchar, '*') != NULL)
		{
			appendStringInfoString(&buf, "********");
			continue;
		}
		dsn_append_value(&buf, opt->val);
	}
	PQconninfoFree(opts);
	return buf.data;
}

/*
 * dsn_connect_timeout: the DSN's connect_timeout in seconds, or our default.
 * libpq enforces connect_timeout only in its blocking connect; remote.c
 * waits on its own and needs the number.
 */
int
dsn_connect_timeout(const char *dsn)
{
	PQconninfoOption *opts;
	PQconninfoOption *opt;
	int			timeout = DEFAULT_CONNECT_TIMEOUT_S;

	opts = PQconninfoParse(dsn, NULL);
	if (opts == NULL)
		return timeout;
	for (opt = opts; opt->keyword != NULL; opt++)
	{
		if (strcmp(opt->keyword, "connect_timeout") == 0 &&
			opt->val != NULL && opt->val[0] != '\0')
		{
			int			value = atoi(opt->val);

			/* libpq treats 1 as 2 and anything <= 0 as "wait forever" */
			timeout = value <= 0 ? 0 : Max(value, 2);
		}
	}
	PQconninfoFree(opts);
	return timeout;
}
