// Package deploy holds eventpipe's deployment files: Prometheus alert and
// recording rules with their promtool unit tests (prometheus/), the Grafana
// dashboard and provisioning (grafana/), docker-compose.yml and Dockerfile.
//
// It has no Go API. Its tests keep the files honest: every metric the rules
// and the dashboard use must be exported by a running pipeline, and the
// compose file must reference files that exist.
package deploy
