package generate

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/url"
	"strings"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// aaTOML is the attestation agent's configuration in the initdata, as the
// shim's default initdata and the demo write it: the KBS URL and the
// certificate to trust it by.
func aaTOML(kbsURL string, cert []byte) (string, error) {
	if kbsURL == "" {
		return "", &Error{Problem: "no KBS URL", Hint: "pass --kbs-url https://HOST:PORT, the KBS the pod's guest attests to"}
	}
	u, err := url.Parse(kbsURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", &Error{Problem: fmt.Sprintf("KBS URL %q is not an http(s) URL", kbsURL), Hint: "pass --kbs-url https://HOST:PORT"}
	}
	var b strings.Builder
	b.WriteString("[token_configs.kbs]\n")
	fmt.Fprintf(&b, "url = %s\n", tomlBasic(kbsURL))
	if len(cert) > 0 {
		if blk, _ := pem.Decode(cert); blk == nil || blk.Type != "CERTIFICATE" {
			return "", &Error{Problem: "the KBS CA file is not a PEM certificate", Hint: "pass --kbs-ca with the KBS's tls/cert.pem"}
		}
		pemText := strings.TrimRight(string(cert), "\n") + "\n"
		if strings.Contains(pemText, `"""`) || strings.Contains(pemText, `\`) || strings.Contains(pemText, "'''") {
			return "", &Error{Problem: "the KBS CA file holds TOML string quotes or backslashes", Hint: "pass --kbs-ca with the KBS's tls/cert.pem alone"}
		}
		fmt.Fprintf(&b, "cert = \"\"\"\n%s\"\"\"\n", pemText)
	}
	return b.String(), nil
}

// initdataTOML is CoCo's initdata document: aa.toml and policy.rego under
// [data], each a multi-line literal string when its text allows one (the
// bytes must come back exactly from a TOML parser: that is what the guest
// evaluates and what the digest covers).
func initdataTOML(aa, policy string) ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "version = \"0.1.0\"\nalgorithm = %q\n\n[data]\n", kbstypes.DefaultInitdataAlgorithm)
	fmt.Fprintf(&b, "\"aa.toml\" = %s\n", tomlMultiline(aa))
	fmt.Fprintf(&b, "\"policy.rego\" = %s\n", tomlMultiline(policy))
	if b.Len() > kbstypes.MaxInitdataSize {
		return nil, fmt.Errorf("initdata is %d bytes, the shim's limit is %d", b.Len(), kbstypes.MaxInitdataSize)
	}
	return b.Bytes(), nil
}

// tomlMultiline writes s as ”'...”' (the newline after the opening quotes
// is not part of the string), or as a basic string when s holds what a
// literal string cannot: ”', a trailing ', or control characters other
// than tab and newline.
func tomlMultiline(s string) string {
	literalOK := !strings.Contains(s, "'''") && !strings.HasSuffix(s, "'")
	for _, r := range s {
		if (r < 0x20 && r != '\t' && r != '\n') || r == 0x7f {
			literalOK = false
			break
		}
	}
	if literalOK {
		return "'''\n" + s + "'''"
	}
	return tomlBasic(s)
}

// tomlBasic writes s as a TOML basic string, escaping what TOML requires.
func tomlBasic(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// encodeAnnotation is base64 of the gzipped TOML, so that a policy of a few
// tens of KiB stays small in the pod's annotations (Kubernetes allows
// 256 KiB of them in all).
func encodeAnnotation(doc []byte) (string, error) {
	var z bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&z, gzip.BestCompression)
	zw.Write(doc)
	if err := zw.Close(); err != nil {
		return "", err
	}
	enc := base64.StdEncoding.EncodeToString(z.Bytes())
	if len(enc) > 256<<10 {
		return "", fmt.Errorf("the initdata annotation would be %d bytes, more than Kubernetes allows for all annotations", len(enc))
	}
	return enc, nil
}
