package history

import dto "github.com/prometheus/client_model/go"

// prometheusMetric reads a collector's current value.
type prometheusMetric struct{ dto.Metric }
