package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/sasl"
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

// applySASL sets Sarama's SASL settings from cfg. SCRAM uses franz-go's
// implementation (already a dependency through kfake) behind Sarama's
// SCRAMClient interface.
func applySASL(sc *sarama.Config, cfg config.SASL) error {
	if cfg.Mechanism == "" {
		return nil
	}
	if cfg.Username == "" {
		return fmt.Errorf("broker.kafka.sasl.username must be set when broker.kafka.sasl.mechanism is %s", cfg.Mechanism)
	}
	sc.Net.SASL.Enable = true
	sc.Net.SASL.Handshake = true
	sc.Net.SASL.User = cfg.Username
	sc.Net.SASL.Password = cfg.Password
	switch cfg.Mechanism {
	case config.SASLPlain:
		sc.Net.SASL.Mechanism = sarama.SASLTypePlaintext
	case config.SASLSCRAMSHA256:
		sc.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA256
		sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{sha512: false} }
	case config.SASLSCRAMSHA512:
		sc.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA512
		sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{sha512: true} }
	default:
		return fmt.Errorf("broker.kafka.sasl.mechanism must be one of %s, %s, %s or empty, got %q",
			config.SASLPlain, config.SASLSCRAMSHA256, config.SASLSCRAMSHA512, cfg.Mechanism)
	}
	return nil
}

// scramClient adapts franz-go's SCRAM session to sarama.SCRAMClient: Sarama
// calls Begin, then Step("") for the client-first message, then Step with
// each server challenge until Done.
type scramClient struct {
	sha512  bool
	auth    scram.Auth
	session sasl.Session
	done    bool
}

func (c *scramClient) Begin(user, password, authzID string) error {
	c.auth = scram.Auth{User: user, Pass: password, Zid: authzID}
	return nil
}

func (c *scramClient) Step(challenge string) (string, error) {
	if c.session == nil {
		mech := c.auth.AsSha256Mechanism()
		if c.sha512 {
			mech = c.auth.AsSha512Mechanism()
		}
		session, first, err := mech.Authenticate(context.Background(), "")
		if err != nil {
			return "", err
		}
		c.session = session
		return string(first), nil
	}
	if c.done {
		return "", errors.New("scram: exchange already done")
	}
	done, resp, err := c.session.Challenge([]byte(challenge))
	if err != nil {
		return "", err
	}
	c.done = done
	return string(resp), nil
}

func (c *scramClient) Done() bool { return c.done }
