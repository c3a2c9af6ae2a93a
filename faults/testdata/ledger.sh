#!/bin/sh
# ledger.sh LEDGER [SLOWFLAG SECONDS]
#
# The fault suite's task side effect: append "done <task id> <pipeline pid>"
# to LEDGER, one line per execution. The pipeline runs this script directly
# (the shell executor, argv only), so $PPID is the eventpipe process that ran
# the task. A line under PIPE_BUF bytes written with >> (O_APPEND) lands whole
# even when many tasks append at once.
#
# With SLOWFLAG and SECONDS: when the file SLOWFLAG exists the task is slow,
# it appends "start <task id> <pid>" and sleeps SECONDS before "done". The
# SIGTERM scenario removes SLOWFLAG so that redelivered tasks run fast.
set -eu
ledger=$1
if [ $# -ge 3 ] && [ -e "$2" ]; then
	echo "start $EVENTPIPE_TASK_ID $PPID" >>"$ledger"
	sleep "$3"
fi
echo "done $EVENTPIPE_TASK_ID $PPID" >>"$ledger"
