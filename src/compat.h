/*-------------------------------------------------------------------------
 *
 * compat.h
 *		  The few places where the server API of the target's PostgreSQL
 *		  release differs (targets 15 to 18): kept here, not in the code.
 *
 *-------------------------------------------------------------------------
 */
#ifndef ZDM_COMPAT_H
#define ZDM_COMPAT_H

/*
 * PostgreSQL 18 replaced pg_attribute_noreturn(), written after a
 * declaration, with pg_noreturn, written before it.
 */
#if PG_VERSION_NUM < 180000
#ifdef __GNUC__
#define pg_noreturn __attribute__((noreturn))
#else
#define pg_noreturn
#endif
#endif

/*
 * The apply worker's row of pg_stat_subscription (given its alias): relid
 * is NULL for it, and from 16 also for parallel apply workers, which have
 * leader_pid set.
 */
#if PG_VERSION_NUM >= 160000
#define ZDM_APPLY_LEADER(alias) \
	alias ".relid IS NULL AND " alias ".leader_pid IS NULL"
#else
#define ZDM_APPLY_LEADER(alias) alias ".relid IS NULL"
#endif

/*
 * The setting that bounds the replication origins a subscriber can track:
 * its own from 18, max_replication_slots before.
 */
#if PG_VERSION_NUM >= 180000
#define ZDM_ORIGINS_SETTING "max_active_replication_origins"
#else
#define ZDM_ORIGINS_SETTING "max_replication_slots"
#endif

/*
 * The subscription's streaming option: parallel from 16 (18's default,
 * off before): a large transaction reaches the target while it runs on
 * the source, so the target applies it about a quarter sooner after its
 * commit (README, "Subscription options on a PostgreSQL 16+ target").
 * PostgreSQL 15 keeps its default.
 */
#if PG_VERSION_NUM >= 160000
#define ZDM_SUBSCRIPTION_STREAMING "parallel"
#endif

#endif							/* ZDM_COMPAT_H */
