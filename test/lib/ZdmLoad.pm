# test/lib/ZdmLoad.pm: write load on the source while a test cuts over, from
# psql client processes, and record exactly which commits the source
# acknowledged.
#
# Every writer is a separate process (this module run as a script, see
# writer_main) that drives psql through IPC::Run pipes and inserts rows with
# unique keys (table, writer id, sequence number) into the tables it is
# given, in turn.  After each transaction psql itself says how it ended:
# the script sent for it checks :ERROR after every statement and echoes
# "done <key> ok" only when the last statement, the commit included,
# succeeded.  The writer prints one line per transaction on its stdout,
# which goes to a file the test reads:
#
#   ok <table> <id> <seq>             committed: the source acknowledged it
#   err <table> <id> <seq> <sqlstate> failed with that SQLSTATE
#   lost <table> <id> <seq>           psql lost its connection: not acknowledged
#   open <table> <id> <seq>           (open_tx) the row is inserted and the
#                                     transaction stays open
#
# Writer modes (the session modes open a new session if theirs is lost):
#   session     one psql session, one autocommit INSERT per transaction
#   reconnect   a new psql process and connection for every transaction
#   open_tx     one session; its first transaction inserts a row and then
#               sleeps inside the transaction (the fence of a cutover must
#               end it), the later ones are short BEGIN; INSERT; sleep;
#               COMMIT transactions
#   read_write  one session that runs SET default_transaction_read_only =
#               off, then BEGIN READ WRITE; INSERT; COMMIT per transaction
#
# A writer stops when the stop file exists (checked between transactions).
# Its sessions have application_name zdm_load_writer.  The writer process
# loads only this module and IPC::Run: PostgreSQL::Test::Utils would take
# over its stdout.
package ZdmLoad;

use strict;
use warnings;

use Cwd 'abs_path';
use File::Basename 'dirname';
use IPC::Run;
use POSIX ();
use Time::HiRes ();

# Where this module lives, so that writer processes can load it.
my $LIBDIR = dirname(abs_path(__FILE__));

# Writer processes not reaped yet, killed by the END block if a test dies.
my %live_pids;

# --- The test's side --------------------------------------------------------

# ZdmLoad->new(node, dbname, tables => [names], dir => directory,
# user => role): a set of
# writers on database dbname of node, writing to the given tables (names
# without spaces, as they appear in the records; each table needs integer
# columns client and seq, and should have UNIQUE (client, seq)).  Their
# output files go to dir (a fresh temporary directory by default).  They
# connect as role user (default: the test's superuser).
# tables_sql(): the tables the cross-version and fallback tests load with
# writers -- a serial key, an identity key, a quoted mixed-case name, and a
# keyless table with REPLICA IDENTITY FULL -- each with (client, seq) for
# the writers' unique keys.
sub tables_sql
{
	return q{
CREATE TABLE t_serial (
    id serial PRIMARY KEY,
    client integer NOT NULL,
    seq integer NOT NULL,
    note text,
    UNIQUE (client, seq)
);
CREATE TABLE t_ident (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client integer NOT NULL,
    seq integer NOT NULL,
    UNIQUE (client, seq)
);
CREATE TABLE "MiXeD_Case" (
    "Id" bigserial PRIMARY KEY,
    client integer NOT NULL,
    seq integer NOT NULL,
    UNIQUE (client, seq)
);
CREATE TABLE t_keyless (client integer NOT NULL, seq integer NOT NULL, note text);
ALTER TABLE t_keyless REPLICA IDENTITY FULL;
};
}

sub new
{
	my ($class, $node, $dbname, %opts) = @_;
	my $self = {
		node => $node,
		dbname => $dbname,
		connstr => $node->connstr($dbname)
		  . ($opts{user} ? " user=$opts{user}" : '')
		  . ' application_name=zdm_load_writer',
		psql => $node->installed_command('psql'),
		tables => $opts{tables} || die('ZdmLoad->new: tables missing'),
		dir => $opts{dir} || PostgreSQL::Test::Utils::tempdir('zdm_load'),
		writers => [],
	};
	$self->{stop_file} = "$self->{dir}/stop";
	return bless $self, $class;
}

# start_writer(mode, id, pause_ms): start one writer process; id (a positive
# integer) is its key prefix and must be unique among the writers of the
# test.  pause_ms is how long it rests between transactions (default 5).
sub start_writer
{
	my ($self, $mode, $id, $pause_ms) = @_;
	my $out = "$self->{dir}/writer_$id.out";
	my $err = "$self->{dir}/writer_$id.err";
	my @cmd = (
		$^X, "-I$LIBDIR", '-MZdmLoad', '-e', 'ZdmLoad::writer_main(@ARGV)',
		'--',
		mode => $mode,
		id => $id,
		connstr => $self->{connstr},
		psql => $self->{psql},
		tables => join(',', @{ $self->{tables} }),
		stop => $self->{stop_file},
		pause_ms => $pause_ms // 5);

	my $pid = fork();
	die "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		# Child: never return into the test (its END blocks would stop the
		# clusters); exec the writer or die quietly.
		open(STDIN, '<', '/dev/null');
		open(STDOUT, '>', $out) or POSIX::_exit(126);
		open(STDERR, '>', $err) or POSIX::_exit(126);
		{ exec(@cmd) }
		POSIX::_exit(127);
	}
	$live_pids{$pid} = 1;
	push @{ $self->{writers} },
	  { mode => $mode, id => $id, pid => $pid, out => $out, err => $err };
	return;
}

# writers(): the writers started, each { mode, id, pid, out, err }.
sub writers
{
	my ($self) = @_;
	return @{ $self->{writers} };
}

# records(id): what writer id has recorded so far, in order, each
# { kind => ok|err|lost|open, table, id, seq, sqlstate }.  Without id: the
# records of every writer.
sub records
{
	my ($self, $id) = @_;
	my @records;

	foreach my $w (@{ $self->{writers} })
	{
		next if defined $id && $w->{id} != $id;
		open(my $fh, '<', $w->{out}) or next;
		local $/;
		my $text = <$fh>;
		close $fh;
		# only complete lines: the writer may be writing the last one
		foreach my $line ($text =~ /^(.*)\n/mg)
		{
			my ($kind, $table, $wid, $seq, $sqlstate) = split / /, $line;
			push @records,
			  {
				kind => $kind,
				table => $table,
				id => $wid,
				seq => $seq,
				sqlstate => $sqlstate // ''
			  };
		}
	}
	return @records;
}

# wait_for(condition, timeout_s): call condition (a sub) until it returns
# true or timeout_s seconds (default: the TAP default timeout) have passed.
# Returns whether it became true.
sub wait_for
{
	my ($self, $condition, $timeout) = @_;
	no warnings 'once';    # set by PostgreSQL::Test::Utils in the test
	my $deadline =
	  time() + ($timeout // $PostgreSQL::Test::Utils::timeout_default);

	while (time() < $deadline)
	{
		return 1 if $condition->();
		Time::HiRes::sleep(0.1);
	}
	return $condition->() ? 1 : 0;
}

# running(): how many writer processes are still running.
sub running
{
	my ($self) = @_;
	my $n = 0;

	foreach my $w (@{ $self->{writers} })
	{
		next if $w->{exited};
		if (waitpid($w->{pid}, POSIX::WNOHANG()) == $w->{pid})
		{
			$w->{exited} = 1;
			$w->{status} = $?;
			delete $live_pids{ $w->{pid} };
			next;
		}
		$n++;
	}
	return $n;
}

# stop(): ask every writer to stop after its current transaction and wait
# for them (30 s at most: a writer stuck in a lock wait or in the long
# transaction of open_tx would never stop); writers still running then are
# killed.  Returns how many had to be killed.
sub stop
{
	my ($self) = @_;
	my $killed = 0;

	open(my $fh, '>', $self->{stop_file}) or die "cannot create stop file: $!";
	close $fh;
	$self->wait_for(sub { $self->running == 0 }, 30);
	foreach my $w (@{ $self->{writers} })
	{
		next if $w->{exited};
		kill 'KILL', $w->{pid};
		waitpid($w->{pid}, 0);
		$w->{exited} = 1;
		delete $live_pids{ $w->{pid} };
		$killed++;
	}
	# a killed writer may leave its session running a statement
	$self->{node}->safe_psql($self->{dbname}, q{
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE application_name = 'zdm_load_writer'}) if $killed;
	return $killed;
}

END
{
	# A test that died midway: do not leave writers behind.
	kill 'KILL', keys %live_pids if %live_pids;
}

# --- The writer process -----------------------------------------------------

# A psql session driven through pipes.
sub _session_start
{
	my ($opt) = @_;
	my $s = { in => '', out => '', err => '' };
	$s->{h} = IPC::Run::start(
		[ $opt->{psql}, '-XAtq', '-d', $opt->{connstr} ],
		'<' => \$s->{in},
		'>' => \$s->{out},
		'2>' => \$s->{err});
	return $s;
}

sub _session_end
{
	my ($s) = @_;
	return unless $s;
	eval {
		$s->{in} .= "\\q\n" if $s->{h}->pumpable;
		$s->{h}->finish;
		1;
	} or eval { $s->{h}->kill_kill; };
	return;
}

# Wait until psql prints a line matching re and consume the output up to
# it; returns the first capture group, or undef when psql ended first (its
# connection was lost).
sub _session_wait
{
	my ($s, $re) = @_;

	for (;;)
	{
		if ($s->{out} =~ $re)
		{
			my $got = $1;
			substr($s->{out}, 0, $+[0], '');
			return $got;
		}
		return undef unless $s->{h}->pumpable;
		eval { $s->{h}->pump; 1 } or return undef;
	}
}

# The psql script of one transaction: statements run in order, each checked;
# the first that fails ends it with "done <tag> err <sqlstate>" (and a
# ROLLBACK if the first statement was a BEGIN), and "done <tag> ok" comes
# only after the last one succeeded.  Items starting with a backslash are
# psql commands, run unchecked.
sub _transaction_script
{
	my ($tag, @statements) = @_;
	my $rollback = $statements[0] =~ /^BEGIN/ ? "ROLLBACK;\n" : '';
	my $script = '';
	my $depth = 0;

	foreach my $stmt (@statements)
	{
		if ($stmt =~ /^\\/)
		{
			$script .= "$stmt\n";
			next;
		}
		$script .= "$stmt;\n\\if :ERROR\n"
		  . "\\echo done $tag err :SQLSTATE\n"
		  . $rollback
		  . "\\else\n";
		$depth++;
	}
	$script .= "\\echo done $tag ok\n";
	$script .= "\\endif\n" x $depth;
	return $script;
}

# writer_main(key => value...): the body of a writer process; see the file
# header.
sub writer_main
{
	my %opt = @_;
	my @tables = split /,/, $opt{tables};
	my $id = $opt{id};
	my $mode = $opt{mode};
	my $session;
	my $seq = 0;

	$| = 1;
	$SIG{PIPE} = 'IGNORE';

	while (!-e $opt{stop})
	{
		$seq++;
		my $table = $tables[ $seq % @tables ];
		my $tag = "$table $id $seq";
		my $insert = "INSERT INTO $table (client, seq) VALUES ($id, $seq)";
		my ($script, $open_mark);

		if ($mode eq 'session' || $mode eq 'reconnect')
		{
			$script = _transaction_script($tag, $insert);
		}
		elsif ($mode eq 'read_write')
		{
			$script = _transaction_script($tag, 'BEGIN READ WRITE',
				$insert, 'COMMIT');
		}
		elsif ($mode eq 'open_tx')
		{
			# the first transaction stays open until something ends it
			my $sleep = $seq == 1 ? 600 : 0.02;
			$open_mark = "open $tag";
			$script = _transaction_script($tag, 'BEGIN', $insert,
				"\\echo $open_mark", "SELECT pg_sleep($sleep)", 'COMMIT');
		}
		else
		{
			die "unknown writer mode $mode";
		}

		my $outcome;
		if ($mode eq 'reconnect')
		{
			my ($out, $err) = ('', '');
			eval {
				IPC::Run::run([ $opt{psql}, '-XAtq', '-d', $opt{connstr} ],
					'<' => \$script, '>' => \$out, '2>' => \$err);
				1;
			};
			$outcome = $1 if $out =~ /^done \Q$tag\E (ok|err \S*)$/m;
			print STDERR $err if !defined $outcome;
		}
		else
		{
			if (!$session)
			{
				$session = _session_start(\%opt);
				$session->{in} .= "SET default_transaction_read_only = off;\n"
				  if $mode eq 'read_write';
			}
			$session->{in} .= $script;
			$session->{err} = '';
			my $line = _session_wait($session,
				qr/^((?:open|done) \Q$tag\E.*)$/m);
			if (defined $line && $open_mark && $line eq $open_mark)
			{
				print "$open_mark\n";
				$line = _session_wait($session, qr/^(done \Q$tag\E .*)$/m);
			}
			if (defined $line)
			{
				($outcome = $line) =~ s/^done \Q$tag\E //;
			}
			else
			{
				print STDERR "writer $id: psql session ended: $session->{err}\n";
				_session_end($session);
				$session = undef;
			}
		}

		if (!defined $outcome)
		{
			print "lost $tag\n";
		}
		elsif ($outcome eq 'ok')
		{
			print "ok $tag\n";
		}
		else
		{
			my (undef, $sqlstate) = split / /, $outcome;
			print "err $tag $sqlstate\n";
		}
		Time::HiRes::sleep($opt{pause_ms} / 1000) if $opt{pause_ms};
	}
	_session_end($session);
	POSIX::_exit(0);
}

1;
