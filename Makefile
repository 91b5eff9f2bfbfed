# Makefile for pg_zdm (PGXS)

MODULE_big = pg_zdm
OBJS = \
	src/abort.o \
	src/checks.o \
	src/checks_privileges.o \
	src/checks_schema.o \
	src/copy.o \
	src/copy_status.o \
	src/cutover.o \
	src/dsn.o \
	src/fallback.o \
	src/fallback_checks.o \
	src/fallback_worker.o \
	src/fence.o \
	src/init.o \
	src/pg_zdm.o \
	src/remote.o \
	src/reverse.o \
	src/sequences.o \
	src/source_features.o \
	src/source.o \
	src/state.o \
	src/status.o \
	src/subscription.o \
	src/verify.o \
	src/worker.o

EXTENSION = pg_zdm
DATA = sql/pg_zdm--1.0.sql
PGFILEDESC = "pg_zdm - zero-downtime migration with logical replication"

PG_CPPFLAGS = -I$(libpq_srcdir) -Wall -Wextra -Werror -Wno-unused-parameter \
	-Wno-missing-field-initializers -Wno-sign-compare
SHLIB_LINK_INTERNAL = $(libpq)

# The regression suite starts its own throwaway server (wal_level = logical);
# the source is a second database of that same cluster.
REGRESS = setup check init_basic ignore_missing defer_copy quoted_names bad_input abort verify parallel_copy fallback
REGRESS_OPTS = --temp-instance=tmp_check_regress --temp-config=test/regress.conf

# TAP tests run separate source and target clusters.
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
