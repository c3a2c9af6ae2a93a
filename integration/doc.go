// Package integration runs eventpipe end to end against real brokers: one
// scenario suite over every broker (event → task → result, poison paths,
// retries, duplicates, per-key order on Kafka, 10,000 events), a broker
// restart in the middle of a run, interop with outside clients (kcat,
// amqp-publish), Watermill's universal pub/sub suite, and the end-to-end
// benchmarks.
//
// Brokers come from, in order:
//
//	Kafka:    EVENTPIPE_TEST_KAFKA_BROKERS=host:port,...; testcontainers
//	          (Docker); an in-process kfake broker (always available)
//	RabbitMQ: EVENTPIPE_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/;
//	          testcontainers (Docker)
//
// A broker without a provider skips its tests and says how to enable it;
// with CI=true every skip fails the run instead. The package holds tests
// only.
package integration
