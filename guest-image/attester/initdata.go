package attester

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"

	"github.com/pelletier/go-toml/v2"
)

// MaxInitdata bounds the initdata document the host hands over.
const MaxInitdata = 256 << 10

// Initdata is what the guest uses of a CoCo initdata document.
type Initdata struct {
	Version   string
	Algorithm string
	// Data holds the named documents ("aa.toml", "policy.rego", ...).
	Data map[string]string
	// KBS is aa.toml's [token_configs.kbs].
	KBS KBSConfig
}

// KBSConfig names the KBS the attestation agent talks to.
type KBSConfig struct {
	URL  string `toml:"url"`
	Cert string `toml:"cert"` // PEM; empty = the image's CA bundle
}

type initdataDoc struct {
	Version   string            `toml:"version"`
	Algorithm string            `toml:"algorithm"`
	Data      map[string]string `toml:"data"`
}

type aaDoc struct {
	TokenConfigs struct {
		KBS *KBSConfig `toml:"kbs"`
	} `toml:"token_configs"`
}

// ParseInitdata reads a CoCo initdata TOML document (version, algorithm,
// [data] with "aa.toml" and optionally "policy.rego") and the KBS settings
// in its aa.toml.
func ParseInitdata(b []byte) (*Initdata, error) {
	if len(b) == 0 {
		return nil, errors.New("initdata is empty")
	}
	if len(b) > MaxInitdata {
		return nil, fmt.Errorf("initdata is %d bytes, limit is %d", len(b), MaxInitdata)
	}
	var doc initdataDoc
	if err := toml.NewDecoder(bytes.NewReader(b)).Decode(&doc); err != nil {
		return nil, fmt.Errorf("initdata is not TOML: %w", err)
	}
	if doc.Version == "" {
		return nil, errors.New("initdata has no version")
	}
	switch doc.Algorithm {
	case "sha256", "sha384", "sha512":
	default:
		return nil, fmt.Errorf("initdata algorithm %q: want sha256, sha384 or sha512", doc.Algorithm)
	}
	aa, ok := doc.Data["aa.toml"]
	if !ok {
		return nil, errors.New(`initdata has no "aa.toml" in [data]: the attestation agent needs the KBS address`)
	}
	var a aaDoc
	if err := toml.NewDecoder(bytes.NewReader([]byte(aa))).Decode(&a); err != nil {
		return nil, fmt.Errorf("initdata aa.toml is not TOML: %w", err)
	}
	if a.TokenConfigs.KBS == nil {
		return nil, errors.New("initdata aa.toml has no [token_configs.kbs]")
	}
	kbs := *a.TokenConfigs.KBS
	u, err := url.Parse(kbs.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return nil, fmt.Errorf("initdata aa.toml token_configs.kbs.url %q: want http(s)://host[:port]", kbs.URL)
	}
	if kbs.Cert != "" {
		if err := checkPEM(kbs.Cert); err != nil {
			return nil, fmt.Errorf("initdata aa.toml token_configs.kbs.cert: %w", err)
		}
	}
	return &Initdata{Version: doc.Version, Algorithm: doc.Algorithm, Data: doc.Data, KBS: kbs}, nil
}

// checkPEM accepts one or more PEM certificates and nothing else, so a
// mistake shows here and not as a TLS failure at the first key request.
func checkPEM(s string) error {
	rest := []byte(s)
	n := 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return fmt.Errorf("PEM block %q: want CERTIFICATE", block.Type)
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return err
		}
		n++
	}
	if n == 0 || len(bytes.TrimSpace(rest)) > 0 {
		return errors.New("want PEM certificates only")
	}
	return nil
}
