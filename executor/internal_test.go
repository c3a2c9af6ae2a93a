package executor

import (
	"encoding/json"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/task"
)

func TestIsPublic(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		addr string
		want bool
	}{
		{name: "public IPv4", addr: "93.184.216.34", want: true},
		{name: "public IPv6", addr: "2606:4700::1111", want: true},
		{name: "just below CGNAT", addr: "100.63.255.255", want: true},
		{name: "just above CGNAT", addr: "100.128.0.0", want: true},
		{name: "loopback", addr: "127.0.0.1"},
		{name: "loopback range", addr: "127.8.9.10"},
		{name: "IPv6 loopback", addr: "::1"},
		{name: "IPv4-mapped loopback", addr: "::ffff:127.0.0.1"},
		{name: "IPv4-mapped private", addr: "::ffff:10.1.2.3"},
		{name: "10/8", addr: "10.255.0.1"},
		{name: "172.16/12", addr: "172.31.0.1"},
		{name: "192.168/16", addr: "192.168.1.1"},
		{name: "unique local fc00::/7", addr: "fc12::1"},
		{name: "link-local", addr: "169.254.1.1"},
		{name: "cloud metadata", addr: "169.254.169.254"},
		{name: "IPv6 link-local", addr: "fe80::1"},
		{name: "unspecified", addr: "0.0.0.0"},
		{name: "this network", addr: "0.1.2.3"},
		{name: "IPv6 unspecified", addr: "::"},
		{name: "multicast", addr: "224.0.0.1"},
		{name: "IPv6 multicast", addr: "ff02::1"},
		{name: "CGNAT", addr: "100.64.0.1"},
		{name: "CGNAT top", addr: "100.127.255.255"},
		{name: "broadcast", addr: "255.255.255.255"},
		{name: "NAT64 of loopback", addr: "64:ff9b::7f00:1"},
		{name: "NAT64 of cloud metadata", addr: "64:ff9b::a9fe:a9fe"},
		{name: "NAT64 local-use of private", addr: "64:ff9b:1::0a00:1"},
		{name: "NAT64 of public", addr: "64:ff9b::5db8:d822", want: true},
		{name: "6to4 of loopback", addr: "2002:7f00:1::1"},
		{name: "6to4 of public", addr: "2002:5db8:d822::1", want: true},
		{name: "IPv4-compatible loopback", addr: "::127.0.0.1"},
		{name: "IETF protocol assignments", addr: "192.0.0.8"},
		{name: "benchmarking", addr: "198.18.0.1"},
		{name: "reserved class E", addr: "240.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, isPublic(netip.MustParseAddr(tt.addr)))
		})
	}
}

func TestRefuseNonPublic_is_permanent_and_names_the_address(t *testing.T) {
	t.Parallel()
	err := refuseNonPublic("tcp6", "[fe80::1%eth0]:80", nil)

	require.Error(t, err)
	assert.True(t, permanent.Is(err))
	assert.Contains(t, err.Error(), "refusing to dial fe80::1%eth0")
	assert.NoError(t, refuseNonPublic("tcp4", "93.184.216.34:443", nil))
}

func TestHostAllowlist_allows(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		entries []string
		host    string
		want    bool
	}{
		{name: "empty refuses", entries: nil, host: "example.com"},
		{name: "star allows any", entries: []string{"*"}, host: "anything.example", want: true},
		{name: "exact", entries: []string{"api.example.com"}, host: "api.example.com", want: true},
		{name: "exact ignores case and trailing dot", entries: []string{"API.Example.com."}, host: "api.EXAMPLE.com.", want: true},
		{name: "exact is not a suffix", entries: []string{"example.com"}, host: "api.example.com"},
		{name: "exact is not a prefix", entries: []string{"example.com"}, host: "example.com.evil.net"},
		{name: "wildcard matches one label", entries: []string{"*.example.com"}, host: "api.example.com", want: true},
		{name: "wildcard matches deeper labels", entries: []string{"*.example.com"}, host: "a.b.example.com", want: true},
		{name: "wildcard excludes the apex", entries: []string{"*.example.com"}, host: "example.com"},
		{name: "wildcard needs a dot boundary", entries: []string{"*.example.com"}, host: "evilexample.com"},
		{name: "IPv6 literal with brackets", entries: []string{"[::1]"}, host: "::1", want: true},
		{name: "IPv4 literal", entries: []string{"127.0.0.1"}, host: "127.0.0.1", want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, err := newHostAllowlist(tt.entries)
			require.NoError(t, err)

			assert.Equal(t, tt.want, l.allows(tt.host))
		})
	}
}

// Through a proxy the dialer would check the proxy's address, not the
// destination's: the transport must never take one from the environment.
func TestNewHTTP_uses_no_proxy(t *testing.T) {
	t.Parallel()
	e, err := NewHTTP(HTTPConfig{AllowedHosts: []string{"*"}})
	require.NoError(t, err)

	transport, ok := e.(*httpExecutor).client.Transport.(*http.Transport)
	require.True(t, ok)
	assert.Nil(t, transport.Proxy)
}

func TestParamEnvName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		param  string
		want   string
		wantOK bool
	}{
		{name: "lower", param: "timeout", want: "EVENTPIPE_PARAM_TIMEOUT", wantOK: true},
		{name: "camel case", param: "orderId", want: "EVENTPIPE_PARAM_ORDER_ID", wantOK: true},
		{name: "acronym", param: "HTTPCode", want: "EVENTPIPE_PARAM_HTTP_CODE", wantOK: true},
		{name: "acronym at the end", param: "orderID", want: "EVENTPIPE_PARAM_ORDER_ID", wantOK: true},
		{name: "snake case", param: "order_id", want: "EVENTPIPE_PARAM_ORDER_ID", wantOK: true},
		{name: "snake then upper", param: "a_B", want: "EVENTPIPE_PARAM_A_B", wantOK: true},
		{name: "digits", param: "line2Text", want: "EVENTPIPE_PARAM_LINE2_TEXT", wantOK: true},
		{name: "leading underscore", param: "_x", want: "EVENTPIPE_PARAM__X", wantOK: true},
		{name: "empty", param: ""},
		{name: "leading digit", param: "2fa"},
		{name: "dash", param: "order-id"},
		{name: "dot", param: "a.b"},
		{name: "equals sign", param: "a=b"},
		{name: "non-ASCII", param: "名前"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := paramEnvName(tt.param)

			assert.Equal(t, tt.wantOK, ok)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestBoundedBuffer_keeps_head_counts_rest_and_remembers_tail(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		limit    int
		writes   []string
		wantOut  string
		wantTail string
	}{
		{name: "nothing written", limit: 4, wantOut: "", wantTail: "(none)"},
		{name: "fits", limit: 10, writes: []string{"ab", "cd"}, wantOut: "abcd", wantTail: "abcd"},
		{name: "split across writes", limit: 3, writes: []string{"ab", "cd", "ef"},
			wantOut: "abc…[truncated 3 bytes]", wantTail: "abcdef"},
		{name: "tail keeps the last bytes", limit: 1, writes: []string{strings.Repeat("x", 1000), "END"},
			wantOut: "x…[truncated 1002 bytes]", wantTail: strings.Repeat("x", errTailBytes-3) + "END"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := &boundedBuffer{limit: tt.limit}
			for _, w := range tt.writes {
				n, err := b.Write([]byte(w))
				require.NoError(t, err)
				require.Equal(t, len(w), n)
			}

			assert.Equal(t, tt.wantOut, string(b.Bytes()))
			assert.Equal(t, tt.wantTail, b.Tail())
		})
	}
}

// FuzzTaskParameters feeds arbitrary JSON parameters to both executors'
// parameter handling: any input must give a request or an error, never a panic.
func FuzzTaskParameters(f *testing.F) {
	for _, seed := range []string{
		`{"url":"https://api.example.com/x","method":"post","headers":{"X-A":"1"},"body":{"a":[1,2]},"expectStatus":[200,201],"timeout":3}`,
		`{"url":"http://[::1]:80/","body":"text","expectStatus":204}`,
		`{"command":"/bin/echo","args":["a",1,true,null,{"x":1}],"orderId":"o-1","nested":{"a":1}}`,
		`{"script":"echo","command":"x","timeout":-1}`,
		`{"url":"ftp://x","headers":{"Host":"y","bad name":"z"},"expectStatus":[]}`,
	} {
		f.Add([]byte(seed))
	}
	h, err := NewHTTP(HTTPConfig{AllowedHosts: []string{"*.example.com", "::1"}})
	require.NoError(f, err)
	s, err := NewShell(ShellConfig{AllowedCommands: []string{"/bin/echo"}})
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, data []byte) {
		var params map[string]any
		if json.Unmarshal(data, &params) != nil {
			return
		}
		tk := &task.Task{TaskID: "id", Parameters: params}
		if req, _, err := h.(*httpExecutor).newRequest(tk); err == nil {
			assert.Equal(t, "id", req.Header.Get("Idempotency-Key"))
		} else {
			assert.True(t, permanent.Is(err), "%v", err)
		}
		_, _ = taskTimeout(tk, 0)
		_, _ = s.(*shellExecutor).program(tk)
		_, _ = shellArgs(tk)
		for _, kv := range taskEnv(tk) {
			assert.NotContains(t, kv, "\x00")
		}
	})
}
