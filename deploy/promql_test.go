package deploy_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// PromQL words that are never metric names: binary operators, modifiers and
// the label-list keywords (whose parenthesised lists hold label names).
var (
	promqlKeywords = map[string]bool{
		"and": true, "or": true, "unless": true, "offset": true, "bool": true,
		"atan2": true, "inf": true, "nan": true,
	}
	promqlLabelLists = map[string]bool{
		"by": true, "without": true, "on": true, "ignoring": true,
		"group_left": true, "group_right": true,
	}
	promqlAggregations = map[string]bool{
		"sum": true, "min": true, "max": true, "avg": true, "group": true,
		"stddev": true, "stdvar": true, "count": true, "count_values": true,
		"bottomk": true, "topk": true, "quantile": true, "limitk": true, "limit_ratio": true,
	}
)

// metricNames returns the metric names expr selects, sorted and unique. It
// is a lexer, not a parser: it skips strings, comments, label matchers
// ({...}), ranges ([...]), Grafana variables ($x, ${x}), numbers and
// durations, label lists after by/without/on/ignoring/group_left/group_right,
// keywords, and identifiers followed by "(" (functions) or naming an
// aggregation. What is left is a metric name. Selecting a metric through a
// __name__ matcher is not seen; our files do not do that.
func metricNames(expr string) ([]string, error) {
	var names []string
	i := 0
	for i < len(expr) {
		c := expr[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '"' || c == '\'' || c == '`':
			end, err := skipString(expr, i)
			if err != nil {
				return nil, err
			}
			i = end
		case c == '#':
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case c == '{' || c == '[':
			end, err := skipGroup(expr, i)
			if err != nil {
				return nil, err
			}
			i = end
		case c == '$':
			i = skipVariable(expr, i)
		case isDigit(c) || (c == '.' && i+1 < len(expr) && isDigit(expr[i+1])):
			for i < len(expr) && (isIdentChar(expr[i]) || expr[i] == '.') {
				i++
			}
		case isIdentStart(c):
			start := i
			for i < len(expr) && isIdentChar(expr[i]) {
				i++
			}
			word := expr[start:i]
			next := skipSpace(expr, i)
			lower := strings.ToLower(word)
			switch {
			case promqlLabelLists[lower]:
				if next < len(expr) && expr[next] == '(' {
					end, err := skipGroup(expr, next)
					if err != nil {
						return nil, err
					}
					i = end
				}
			case promqlKeywords[lower], promqlAggregations[lower]:
			case next < len(expr) && expr[next] == '(':
				// A function call; its arguments are lexed in turn.
			default:
				names = append(names, word)
			}
		default:
			i++ // operators, parentheses, commas, @
		}
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// metricFamily maps a series name to the family that exports it: a
// histogram's _bucket, _sum and _count series belong to the histogram.
func metricFamily(name string) string {
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && base != "" {
			return base
		}
	}
	return name
}

// skipString returns the index after the string literal starting at i.
func skipString(s string, i int) (int, error) {
	quote := s[i]
	for j := i + 1; j < len(s); j++ {
		switch {
		case s[j] == '\\' && quote != '`':
			j++
		case s[j] == quote:
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("unterminated string at offset %d in %q", i, s)
}

// skipGroup returns the index after the bracket group ({...}, [...] or
// (...)) starting at i, nested groups and strings included.
func skipGroup(s string, i int) (int, error) {
	var stack []byte
	for j := i; j < len(s); j++ {
		switch c := s[j]; c {
		case '"', '\'', '`':
			end, err := skipString(s, j)
			if err != nil {
				return 0, err
			}
			j = end - 1
		case '{', '[', '(':
			stack = append(stack, c)
		case '}', ']', ')':
			open := map[byte]byte{'}': '{', ']': '[', ')': '('}[c]
			if len(stack) == 0 || stack[len(stack)-1] != open {
				return 0, fmt.Errorf("unbalanced %q at offset %d in %q", c, j, s)
			}
			stack = stack[:len(stack)-1]
			if len(stack) == 0 {
				return j + 1, nil
			}
		}
	}
	return 0, fmt.Errorf("unclosed %q at offset %d in %q", s[i], i, s)
}

// skipVariable returns the index after a Grafana variable: $name or ${...}.
func skipVariable(s string, i int) int {
	j := i + 1
	if j < len(s) && s[j] == '{' {
		for j < len(s) && s[j] != '}' {
			j++
		}
		return min(j+1, len(s))
	}
	for j < len(s) && isIdentChar(s[j]) {
		j++
	}
	return j
}

func skipSpace(s string, i int) int {
	for i < len(s) && strings.IndexByte(" \t\r\n", s[i]) >= 0 {
		i++
	}
	return i
}

func isDigit(c byte) bool      { return c >= '0' && c <= '9' }
func isIdentStart(c byte) bool { return c == '_' || c == ':' || (c|0x20 >= 'a' && c|0x20 <= 'z') }
func isIdentChar(c byte) bool  { return isIdentStart(c) || isDigit(c) }

func TestMetricNames_finds_selected_metrics_and_nothing_else(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		expr string
		want []string
	}{
		{name: "bare selector", expr: "queue_backlog", want: []string{"queue_backlog"}},
		{name: "label matchers are skipped", expr: `up{job="eventpipe", instance=~"a|b"} == 0`, want: []string{"up"}},
		{name: "braces inside a matcher string", expr: `x{l="}{"} + y`, want: []string{"x", "y"}},
		{name: "functions and ranges", expr: "rate(message_processed_total[5m])", want: []string{"message_processed_total"}},
		{name: "grafana range variable", expr: "rate(message_errors_total[$__rate_interval])", want: []string{"message_errors_total"}},
		{name: "grafana variables outside ranges", expr: `sum(x{handler="$handler"}) / ${scale}`, want: []string{"x"}},
		{
			name: "aggregation with by before the body",
			expr: "sum by (handler, le) (rate(message_processing_time_seconds_bucket[5m]))",
			want: []string{"message_processing_time_seconds_bucket"},
		},
		{name: "aggregation with by after the body", expr: "sum(rate(a_total[1m])) without (instance)", want: []string{"a_total"}},
		{
			name: "vector matching keywords and set operators",
			expr: "a / on (x) group_left (y) b and ignoring (z) c unless d or e",
			want: []string{"a", "b", "c", "d", "e"},
		},
		{name: "keywords in any case", expr: "a AND b Or c", want: []string{"a", "b", "c"}},
		{name: "numbers, durations and offset", expr: "a offset 5m > 1e3 and b > 0.05 and c > .5", want: []string{"a", "b", "c"}},
		{name: "bool modifier", expr: "a > bool 1", want: []string{"a"}},
		{name: "quantile argument and string arguments", expr: `label_replace(histogram_quantile(0.95, b), "dst", "$1", "src", "(.*)")`, want: []string{"b"}},
		{name: "recording rule names with colons", expr: "handler:message_processed:rate5m > 1", want: []string{"handler:message_processed:rate5m"}},
		{name: "subquery", expr: "max_over_time(rate(a[1m])[10m:1m])", want: []string{"a"}},
		{name: "comment", expr: "a # b\n+ c", want: []string{"a", "c"}},
		{name: "duplicates collapse", expr: "a / a", want: []string{"a"}},
		{name: "topk with parameter", expr: "topk(5, sum by (rule_id) (task_triggered_total))", want: []string{"task_triggered_total"}},
		{name: "no metric at all", expr: "vector(1) + time()", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := metricNames(tt.expr)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestMetricNames_rejects_unbalanced_input(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		expr string
	}{
		{name: "unclosed matcher", expr: `a{job="x"`},
		{name: "unclosed range", expr: "rate(a[5m)"},
		{name: "unterminated string", expr: `a{job="x}`},
		{name: "mismatched brackets", expr: "sum by (a] (b)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := metricNames(tt.expr)
			assert.Error(t, err)
		})
	}
}

func TestMetricFamily_strips_histogram_series_suffixes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, series, want string
	}{
		{name: "bucket", series: "message_processing_time_seconds_bucket", want: "message_processing_time_seconds"},
		{name: "sum", series: "task_execution_duration_seconds_sum", want: "task_execution_duration_seconds"},
		{name: "count", series: "task_execution_duration_seconds_count", want: "task_execution_duration_seconds"},
		{name: "counter keeps _total", series: "message_processed_total", want: "message_processed_total"},
		{name: "gauge unchanged", series: "queue_backlog", want: "queue_backlog"},
		{name: "bare suffix is a name", series: "_count", want: "_count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, metricFamily(tt.series))
		})
	}
}
