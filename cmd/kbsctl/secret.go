package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/cloak-containers/cloak/api/kbstypes/sealed"
	"github.com/cloak-containers/cloak/kbs/adminclient"
)

// yamlAnnotation marks the commands that accept --output yaml.
const yamlAnnotation = "kbsctl/output-yaml"

// maxSigningKeySize bounds a --signing-key file; a JWK or PEM P-256 key is
// a few hundred bytes.
const maxSigningKeySize = 64 << 10

func (a *app) secretCmd() *cobra.Command {
	cmd := groupCmd("secret", "Seal secrets for Kubernetes, as CoCo's sealed secrets",
		`A sealed secret ("sealed." + an ES256 JWS) names a KBS resource; it is safe to
store in a Kubernetes Secret, because only a guest that attests to the KBS gets
the resource it points at. The format is confidential-data-hub's (CoCo).`,
		`  kbsctl secret keygen --out signing.jwk > signing.pub.jwk
  kbsctl secret seal kbs:///default/app/db-password --signing-key signing.jwk \
    --kid kbs:///default/sealed-secret-keys/signing`)
	cmd.AddCommand(a.secretSealCmd(), a.secretKeygenCmd())
	return cmd
}

func (a *app) secretSealCmd() *cobra.Command {
	var keyFile, kid, name, key string
	var unsigned bool
	cmd := &cobra.Command{
		Use:   "seal kbs:///REPOSITORY/TYPE/TAG (--signing-key FILE --kid KID | --unsigned)",
		Short: "Print a sealed secret pointing at a KBS resource",
		Long: `seal prints a CoCo sealed secret of type vault, provider kbs, naming the KBS
resource in the argument. It holds no secret value: store the value with
kbsctl resource set. No KBS is contacted: --url and --admin-key are not needed.

The secret is signed (ES256) with --signing-key, an EC P-256 private key: a
JWK, as kbsctl secret keygen and CoCo's secret keygen write it, or PEM. --kid
goes into the JWS header; the guest finds the verification key by it, so it is
usually the KBS resource URI of the public JWK (store it there with kbsctl
resource set).

--unsigned prints the placeholder form (sealed.fakejwsheader.<payload>.fakesignature)
for development guests that skip verification. Such a guest accepts any sealed
value, from anyone who can edit the pod's Secret: never use it in production.

Output: the sealed string on one line; -o json {"sealed","resource","kid"};
-o yaml a Kubernetes Secret (--name, default the resource's tag; --key, the
stringData key, default the tag). Unsealing in the guest is not implemented yet.`,
		Example: `  kbsctl secret keygen --out signing.jwk > signing.pub.jwk
  kbsctl resource set default/sealed-secret-keys/signing --file signing.pub.jwk
  echo -n 's3cret' | kbsctl resource set default/app/db-password --file -
  kbsctl secret seal kbs:///default/app/db-password --signing-key signing.jwk \
    --kid kbs:///default/sealed-secret-keys/signing
  kbsctl -o yaml secret seal kbs:///default/app/db-password --signing-key signing.jwk \
    --kid kbs:///default/sealed-secret-keys/signing --name db | kubectl apply -f -
  kbsctl secret seal kbs:///default/app/db-password --unsigned`,
		Annotations: map[string]string{yamlAnnotation: "true"},
		Args:        cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := sealed.ParseResourceURI(args[0])
			if err != nil {
				return usagef("%v (e.g. kbs:///default/app/db-password)", err)
			}
			if name == "" {
				name = res.Tag
			}
			if key == "" {
				key = res.Tag
			}
			if a.output != "yaml" && (cmd.Flags().Changed("name") || cmd.Flags().Changed("key")) {
				return usagef("--name and --key name the Kubernetes Secret of -o yaml; add -o yaml")
			}
			if a.output == "yaml" {
				if err := checkSecretNames(name, key, cmd.Flags().Changed("name"), cmd.Flags().Changed("key")); err != nil {
					return err
				}
			}
			secret := sealed.Vault(res)
			var out string
			switch {
			case unsigned && (keyFile != "" || kid != ""):
				return usagef("--unsigned takes neither --signing-key nor --kid")
			case unsigned:
				out, err = sealed.SealUnsigned(secret)
			case keyFile == "":
				return usagef("--signing-key FILE is required (an EC P-256 private JWK, e.g. from kbsctl secret keygen), or --unsigned for guests that skip verification")
			case kid == "":
				return usagef("--kid is required with --signing-key: the id the guest resolves to the public key, e.g. kbs:///default/sealed-secret-keys/signing")
			default:
				var signer *ecdsa.PrivateKey
				if signer, err = loadSigningKey(keyFile); err != nil {
					return err
				}
				out, err = sealed.Seal(secret, signer, kid)
			}
			if err != nil {
				return err
			}
			if a.output == "yaml" {
				return writeSecretYAML(a.stdout, name, key, out)
			}
			return a.emit(struct {
				Sealed   string `json:"sealed"`
				Resource string `json:"resource"`
				Kid      string `json:"kid"`
			}{out, res.URI(), kid}, func(w io.Writer) { fmt.Fprintln(w, out) })
		},
	}
	f := cmd.Flags()
	f.StringVar(&keyFile, "signing-key", "", "EC P-256 private key to sign with: JWK or PEM")
	f.StringVar(&kid, "kid", "", "key id the guest resolves to the public key, e.g. kbs:///default/sealed-secret-keys/signing")
	f.BoolVar(&unsigned, "unsigned", false, "write the unsigned form that only guests skipping verification accept (development only)")
	f.StringVar(&name, "name", "", "-o yaml: the Kubernetes Secret's name (default: the resource's tag)")
	f.StringVar(&key, "key", "", "-o yaml: the key in the Secret's stringData (default: the resource's tag)")
	return cmd
}

func loadSigningKey(path string) (*ecdsa.PrivateKey, error) {
	const want = "want an EC P-256 private key: a JWK (kbsctl secret keygen) or PEM"
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("--signing-key %s does not exist (%s)", path, want)
	} else if err != nil {
		return nil, fmt.Errorf("--signing-key: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSigningKeySize+1))
	if err != nil {
		return nil, fmt.Errorf("--signing-key: read %s: %w", path, err)
	}
	if len(data) > maxSigningKeySize {
		return nil, fmt.Errorf("--signing-key %s is larger than %d bytes; %s", path, maxSigningKeySize, want)
	}
	key, err := sealed.ParseSigningKey(data)
	if err != nil {
		return nil, fmt.Errorf("--signing-key %s: %w (%s)", path, err, want)
	}
	return key, nil
}

// Kubernetes' rules: a Secret's name is a DNS-1123 subdomain, a data key
// is [-._a-zA-Z0-9]+; both at most 253 characters.
var (
	dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	secretKey        = regexp.MustCompile(`^[-._a-zA-Z0-9]+$`)
)

// checkSecretNames checks --name and --key (or the tag they default to).
func checkSecretNames(name, key string, nameSet, keySet bool) error {
	if len(name) > 253 || !dns1123Subdomain.MatchString(name) {
		if nameSet {
			return usagef("--name %q is not a Kubernetes name: lower-case letters, digits, '-' and '.', at most 253", name)
		}
		return usagef("the resource's tag %q is not a Kubernetes name; pass --name", name)
	}
	if len(key) > 253 || !secretKey.MatchString(key) || key == "." || key == ".." {
		if keySet {
			return usagef("--key %q is not a Kubernetes Secret key: letters, digits, '-', '_' and '.', at most 253", key)
		}
		return usagef("the resource's tag %q is not a Kubernetes Secret key; pass --key", key)
	}
	return nil
}

// writeSecretYAML writes a Kubernetes Secret holding the sealed value.
func writeSecretYAML(w io.Writer, name, key, value string) error {
	type metadata struct {
		Name string `json:"name"`
	}
	out, err := yaml.Marshal(struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   metadata          `json:"metadata"`
		Type       string            `json:"type"`
		StringData map[string]string `json:"stringData"`
	}{"v1", "Secret", metadata{name}, "Opaque", map[string]string{key: value}})
	if err != nil {
		return fmt.Errorf("encode Secret: %w", err)
	}
	_, err = w.Write(out)
	return err
}

func (a *app) secretKeygenCmd() *cobra.Command {
	var out, kid string
	var force bool
	cmd := &cobra.Command{
		Use:   "keygen --out FILE",
		Short: "Create an EC P-256 key pair for signing sealed secrets",
		Long: `keygen writes a new EC P-256 private JWK (alg ES256, mode 0600) to --out for
kbsctl secret seal --signing-key, and prints the public JWK. Store the public
JWK in the KBS as the resource the sealed secrets' --kid names; guests verify
with it. An existing --out is kept unless --force is given. --kid is written
into both JWKs (optional: sealed secrets carry their own kid).`,
		Example: `  kbsctl secret keygen --out signing.jwk > signing.pub.jwk
  kbsctl resource set default/sealed-secret-keys/signing --file signing.pub.jwk`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if out == "" {
				return usagef("--out FILE is required: where to write the private JWK")
			}
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return err
			}
			priv, err := sealed.PrivateJWK(key, kid)
			if err != nil {
				return err
			}
			pub, _ := sealed.PublicJWK(&key.PublicKey, kid)
			privJSON, _ := json.MarshalIndent(priv, "", "  ")
			if err := adminclient.WriteKeyFile(out, append(privJSON, '\n'), 0o600, force); err != nil {
				return err
			}
			if a.output == "text" {
				fmt.Fprintf(a.stderr, "wrote private key %s (mode 0600); store the public JWK printed below in the KBS, e.g. kbsctl resource set default/sealed-secret-keys/signing --file signing.pub.jwk\n", out)
			}
			return a.emit(struct {
				PrivateKey string     `json:"private_key"`
				PublicJWK  sealed.JWK `json:"public_jwk"`
			}{out, pub}, func(w io.Writer) {
				b, _ := json.MarshalIndent(pub, "", "  ")
				fmt.Fprintf(w, "%s\n", b)
			})
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "where to write the private JWK")
	cmd.Flags().StringVar(&kid, "kid", "", "key id to write into the JWKs")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite an existing --out")
	return cmd
}
