# test/lib/ZdmSources.pm: the source servers of other PostgreSQL versions
# that the cross-version tests migrate from.
#
# test/run-tests.sh fetches real server binaries of every major version (see
# test/lib/servers.sh) and hands their installation directories to the tests
# in ZDM_SOURCE_INSTALLS, "MAJOR=DIR" pairs separated by spaces.  Those
# installations hold initdb, pg_ctl and postgres, but neither pg_config
# (PostgreSQL::Test::Cluster asks it for the version) nor psql (the tests
# query every server with the psql of the target's installation, which
# talks to any server from 10 on).  So each one is presented to
# PostgreSQL::Test::Cluster as a small installation of its own, in the
# test's temporary directory:
#
#   bin/initdb, bin/pg_ctl, bin/postgres   links to the real binaries (they
#                                          find their libraries and share/
#                                          from their real location)
#   bin/pg_config                          answers --version only
#   bin/psql                               a link to the target's psql
#   lib/                                   empty: the target's psql must
#                                          not load the old libpq through
#                                          LD_LIBRARY_PATH
package ZdmSources;

use strict;
use warnings;

use Exporter 'import';
use PostgreSQL::Test::Utils;
use Time::HiRes qw(time);

our @EXPORT = qw(source_installs forget_unknown_settings with_source_and_target);

# source_installs(): the installations of ZDM_SOURCE_INSTALLS, ordered by
# major version, each { major => 10, version => '10.23', install_path =>
# dir for PostgreSQL::Test::Cluster->new }.  An empty list when the
# variable is not set; dies on a malformed entry or a missing server.
sub source_installs
{
	my $spec = $ENV{ZDM_SOURCE_INSTALLS} // '';
	my @installs;
	my $bindir = `pg_config --bindir`;
	die "pg_config --bindir failed" if $? != 0;
	chomp $bindir;

	foreach my $entry (split ' ', $spec)
	{
		my ($major, $dir) = $entry =~ /^(\d+)=(.+)$/
		  or die "ZDM_SOURCE_INSTALLS: malformed entry \"$entry\"";
		-x "$dir/bin/$_" or die "ZDM_SOURCE_INSTALLS: no $dir/bin/$_"
		  foreach qw(initdb pg_ctl postgres);
		my $banner = `"$dir/bin/postgres" --version`;
		my ($version) = ($banner // '') =~ /\(PostgreSQL\) (\S+)/
		  or die "$dir/bin/postgres --version printed \"$banner\"";
		$version =~ /^\Q$major\E\./
		  or die "ZDM_SOURCE_INSTALLS: $dir runs $version, not $major";

		my $inst = PostgreSQL::Test::Utils::tempdir("pg$major");
		mkdir "$inst/bin" or die "mkdir $inst/bin: $!";
		mkdir "$inst/lib" or die "mkdir $inst/lib: $!";
		foreach my $program (qw(initdb pg_ctl postgres))
		{
			symlink("$dir/bin/$program", "$inst/bin/$program")
			  or die "symlink $inst/bin/$program: $!";
		}
		symlink("$bindir/psql", "$inst/bin/psql")
		  or die "symlink $inst/bin/psql: $!";
		open my $fh, '>', "$inst/bin/pg_config"
		  or die "cannot write $inst/bin/pg_config: $!";
		print $fh qq{#!/bin/sh
# written by test/lib/ZdmSources.pm for the PostgreSQL $version in $dir
[ "\$1" = --version ] && exec echo "PostgreSQL $version"
echo "pg_config: only --version is known here" >&2
exit 1
};
		close $fh;
		chmod 0755, "$inst/bin/pg_config" or die "chmod: $!";
		push @installs,
		  { major => $major, version => $version, install_path => $inst };
	}
	return sort { $a->{major} <=> $b->{major} } @installs;
}

# forget_unknown_settings(node): comment out the settings that
# PostgreSQL::Test::Cluster's init wrote to postgresql.conf and that the
# node's server does not know (the framework of a newer target writes some
# that older servers refuse to start with, e.g. 18's
# autovacuum_worker_slots).  The server itself says what it knows
# (postgres --describe-config).
sub forget_unknown_settings
{
	my ($node) = @_;
	my $conf = $node->data_dir . '/postgresql.conf';
	my $postgres = $node->installed_command('postgres');
	my %known = map { (split /\t/)[0] => 1 } split /\n/,
	  `"$postgres" --describe-config`;
	die "$postgres --describe-config failed" if $? != 0 || !%known;

	my ($head, $added) = split /(?=^# Added by PostgreSQL::Test::Cluster)/m,
	  PostgreSQL::Test::Utils::slurp_file($conf), 2;
	return unless defined $added;
	$added =~ s{^(([a-z_][a-z0-9_.]*)\s*=)}
	  {$known{$2} || $2 =~ /\./ ? $1 : "# not known to this server: $1"}gme;
	open my $fh, '>', $conf or die "cannot write $conf: $!";
	print $fh $head, $added;
	close $fh;
	return;
}

# with_source_and_target(install, source_conf, code, start_target): a
# source of that installation (ZdmTest::start_source, with the extra
# settings source_conf) and a target of this build (start_target->(name),
# ZdmTest::start_target unless given), both named after the major version;
# runs code->(source, target), then stops both.  Code that dies is a failed
# test, and the next version still runs.  Returns a line saying how many
# assertions ran for this version, how many failed, and how long it took.
sub with_source_and_target
{
	my ($install, $conf, $code, $start_target) = @_;
	my $major = $install->{major};
	my $started = time;
	my $tests_before = Test::More->builder->current_test;
	my ($source, $target);
	$start_target //= \&ZdmTest::start_target;
	my $ok = eval {
		$source = ZdmTest::start_source("source$major", $conf,
			install_path => $install->{install_path});
		$target = $start_target->("target$major");
		$code->($source, $target);
		1;
	};
	Test::More::fail("PG$install->{version}: the test died: $@") unless $ok;

	$target->stop if $target;
	$source->stop if $source;
	my @details = (Test::More->builder->details)
	  [ $tests_before .. Test::More->builder->current_test - 1 ];
	return sprintf('source %s: %d assertions, %d failed, %.0f s',
		$install->{version}, scalar(@details),
		scalar(grep { !$_->{ok} } @details), time - $started);
}

1;
