package config

import (
	"fmt"
	"slices"
	"strings"
)

// EnvVars are the EVENTPIPE_* variables eventpipe reads.
var EnvVars = []string{
	"EVENTPIPE_CONFIG", "EVENTPIPE_BROKER", "EVENTPIPE_KAFKA_BROKERS", "EVENTPIPE_AMQP_URL",
	"EVENTPIPE_HTTP_ADDR", "EVENTPIPE_API_TOKEN", "EVENTPIPE_RULES_FILE", "EVENTPIPE_LOG_LEVEL",
	"EVENTPIPE_LOG_FORMAT", "EVENTPIPE_DATA_DIR",
}

// UnknownEnv returns a warning for every EVENTPIPE_* variable of environ
// ("KEY=value" entries, as os.Environ gives) that eventpipe does not read,
// naming the closest known one: a misspelt EVENTPIPE_API_TOKN would
// otherwise leave the server without its token, silently. EVENTPIPE_TEST_*
// variables belong to the test suites (make exports one) and are not warned.
func UnknownEnv(environ []string) []string {
	var warnings []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "EVENTPIPE_") || strings.HasPrefix(name, "EVENTPIPE_TEST_") || slices.Contains(EnvVars, name) {
			continue
		}
		warnings = append(warnings, fmt.Sprintf("unknown environment variable %s is ignored; did you mean %s?",
			name, closest(name, EnvVars)))
	}
	slices.Sort(warnings)
	return warnings
}

// closest returns the candidate with the smallest edit distance to s.
func closest(s string, candidates []string) string {
	best, bestD := "", -1
	for _, c := range candidates {
		if d := editDistance(s, c); bestD < 0 || d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of two short ASCII names;
// written here because no dependency of the module offers one.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
