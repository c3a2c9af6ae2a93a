package broker

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/eventpipe/eventpipe/config"
)

// newTLSConfig builds the client TLS config of cfg (nil when TLS is off).
// field prefixes errors, e.g. "broker.kafka.tls". Both brokers use it.
func newTLSConfig(cfg config.TLS, field string) (*tls.Config, error) {
	if !cfg.Enabled {
		return nil, nil
	}
	tc := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Operators turn this on for test clusters only; config says so.
		InsecureSkipVerify: cfg.InsecureSkipVerify, //nolint:gosec // explicit opt-in
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%s.ca_file: %w", field, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s.ca_file: no PEM certificate in %q", field, cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, fmt.Errorf("%s: cert_file and key_file must be set together, got cert_file %q and key_file %q",
			field, cfg.CertFile, cfg.KeyFile)
	}
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s.cert_file/key_file: %w", field, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// saslMechanism returns franz-go's mechanism for cfg (nil when SASL is off).
func saslMechanism(cfg config.SASL) (sasl.Mechanism, error) {
	if cfg.Mechanism == "" {
		return nil, nil
	}
	if cfg.Username == "" {
		return nil, fmt.Errorf("broker.kafka.sasl.username must be set when broker.kafka.sasl.mechanism is %s", cfg.Mechanism)
	}
	switch cfg.Mechanism {
	case config.SASLPlain:
		return plain.Auth{User: cfg.Username, Pass: cfg.Password}.AsMechanism(), nil
	case config.SASLSCRAMSHA256:
		return scram.Auth{User: cfg.Username, Pass: cfg.Password}.AsSha256Mechanism(), nil
	case config.SASLSCRAMSHA512:
		return scram.Auth{User: cfg.Username, Pass: cfg.Password}.AsSha512Mechanism(), nil
	default:
		return nil, fmt.Errorf("broker.kafka.sasl.mechanism must be one of %s, %s, %s or empty, got %q",
			config.SASLPlain, config.SASLSCRAMSHA256, config.SASLSCRAMSHA512, cfg.Mechanism)
	}
}
