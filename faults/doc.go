// Package faults is eventpipe's fault suite: it runs the real `eventpipe`
// binary as child processes on Kafka (a kfake broker process) and RabbitMQ,
// injects faults into those processes (SIGKILL, broker restarts, refused
// publishes, a second consumer joining and one dying, poison inputs,
// SIGTERM under load) and checks the promise: every accepted event's tasks
// run at least once, a task runs once unless the process dies mid-task,
// and every failure is visible on a .dlq topic with its reason.
//
// The tasks' side effect is testdata/ledger.sh, run by the shell executor,
// which appends one line per execution to a ledger file; the suite compares
// it with what it sent. Run it with `make test-faults`, i.e.
// `go test -tags faults ./faults/`: the build tag keeps it out of
// `go test ./...`, because it restarts RabbitMQ. It needs RabbitMQ on
// 127.0.0.1:5672 with rabbitmqctl (as root) and Redis on 127.0.0.1:6379.
// Everything is in the _test.go files; cmd/kfake is the broker process.
package faults
